"""nsrun: noise stability of transformer models (Haris, Zhang, Yoshida, ICLR 2026)."""

__version__ = "0.1.0"
