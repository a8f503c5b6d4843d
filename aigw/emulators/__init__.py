"""Local protocol-level emulators of AWS services used by the gateway (tests and `aigw dev`)."""
