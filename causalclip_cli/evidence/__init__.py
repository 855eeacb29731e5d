"""Provenance evidence read from the image files themselves: C2PA manifests, EXIF/XMP generator tags and
the short summaries shown next to a verdict. A leaf of the dependency graph: it may import only the shared
base (`causalclip_cli.errors`, `causalclip_cli.settings`).
"""
