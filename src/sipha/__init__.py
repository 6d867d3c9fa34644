"""sipha: a SIP load-balancing proxy on Twisted."""

__version__ = "0.1.0"


def core_build() -> str:
    """``compiled`` when the core runs as mypyc's extension modules (SIPHA_COMPILE=1), else ``source``."""
    from importlib.machinery import EXTENSION_SUFFIXES

    from sipha import message

    return "compiled" if message.__file__.endswith(tuple(EXTENSION_SUFFIXES)) else "source"
