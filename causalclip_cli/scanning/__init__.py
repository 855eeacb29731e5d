"""The `scan` pipeline and what it writes: batching detector scores into `ScanRecord`s (`scan`), the
table/JSONL/CSV writers with the atomic output file (`output`), the JSON Lines journal that `--resume` adopts
(`resume`), evidence maps on records and their pictures (`explain`, `overlay`), the Ray engine for `scan` and
`embed` (`distributed`), and the HTML report of a scan (`report`, templates in `templates/`). It may import
`training` (the Ray `embed` engine writes training features), `inputs`, `evidence`, `model` and the shared
base, never `robustness`.
"""
