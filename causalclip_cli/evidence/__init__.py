"""Evidence beside the verdict. `provenance`: what the image files say about themselves (C2PA manifests,
EXIF/XMP generator tags and the short summaries shown next to a verdict); it imports only the shared base.
`maps`: where in the pixels the head's evidence lies (evidence maps over the image); it imports `model`.
"""
