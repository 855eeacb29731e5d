"""ROC and precision-recall curves as PNG (matplotlib, optional dependency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from causalclip_cli.errors import UsageError


def write_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], folder: Path) -> list[str]:
    """One ROC and one PR figure, a line per condition; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError("--plot needs matplotlib", hint="pip install 'causalclip[plot]'") from exc
    from sklearn.metrics import precision_recall_curve, roc_curve

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(5, 5))
        for name, (y, p) in curves.items():
            if len(set(np.asarray(y).tolist())) < 2:
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, label=name)
            else:
                prec, rec, _ = precision_recall_curve(y, p)
                ax.plot(rec, prec, label=name)
        if kind == "roc":
            ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
            ax.plot([0, 1], [0, 1], ls=":", c="grey")
        else:
            ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
        ax.legend(loc="lower right" if kind == "roc" else "lower left")
        path = folder / f"{kind}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(str(path))
    return written
