"""Bridges to other libraries' models; each needs its optional extra (e.g. ``[timm]``)."""
