"""How a node is configured: the cluster spec, its certificates and the TLS contexts.

:mod:`.spec` parses and validates the JSON cluster spec; :mod:`.certs` issues and checks the
cluster CA and node certificates (pure functions over PEM bytes); :mod:`.tls` builds the TLS 1.3
mutual-authentication contexts the connector uses.
"""
