"""mailflow: an outbound mail-flow policy milter for hosting providers."""

__version__ = "0.1.0"
