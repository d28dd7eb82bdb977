"""kcompat: will this container image run on this host, and if not, why?"""

__version__ = "0.1.0"
