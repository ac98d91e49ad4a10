import sys

def main() -> int:
    print("reign_sample: not yet implemented", file=sys.stderr)
    return 2

if __name__ == "__main__":
    sys.exit(main())
