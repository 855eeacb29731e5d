"""What goes into the detector: discovering and decoding image files (with their provenance), the scan
data loader, the GPU decode path (`gpu_decode`: JPEGs decoded in batches by nvJPEG and resized on the GPU,
every other file through the CPU path; issue 19), labelled datasets and splits, and the pixel transforms used
for augmentation and robustness checks. It may import `evidence`, `model` and the shared base, never the
scanning, training or robustness packages.
"""
