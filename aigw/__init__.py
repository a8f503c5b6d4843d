"""aigw — the ai-gateway command line: local gateway, admin and analytics tools (never shipped to Lambda)."""

__version__ = "0.1.0"
