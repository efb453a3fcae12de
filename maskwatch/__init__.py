"""maskwatch: watches security cameras for people without face masks, at scale."""

__version__ = "0.1.0"
