"""sipha: a SIP load-balancing proxy on Twisted."""

__version__ = "0.1.0"
