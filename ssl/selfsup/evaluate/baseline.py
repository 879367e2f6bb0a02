"""The quickstart's table: kNN top-1 and RankMe of the trained encoder next to the same encoder at random init."""

from __future__ import annotations


def baseline_table(datamodule, backbone_init, backbone_trained) -> dict:
    """kNN top-1 and RankMe of the encoder at random init versus trained, on the held-out split."""
    from rich.console import Console
    from rich.table import Table

    from selfsup.evaluate.features import extract
    from selfsup.metrics import knn_top1, rankme

    train_ds, test_ds = datamodule.eval_datasets()
    rows = {}
    for name, encoder in (("random init", backbone_init), ("trained", backbone_trained)):
        f_train, y_train = extract(encoder, train_ds)
        f_test, y_test = extract(encoder, test_ds)
        rows[name] = {"knn_top1": knn_top1(f_train, y_train, f_test, y_test), "rankme": rankme(f_test).item()}
    table = Table(title="Encoder on the held-out split (kNN k=200, T=0.07; RankMe of backbone features)")
    for col in ("encoder", "kNN top-1", "RankMe"):
        table.add_column(col, justify="right")
    for name, m in rows.items():
        table.add_row(name, f"{100 * m['knn_top1']:.1f}%", f"{m['rankme']:.1f}")
    Console().print(table)
    return rows
