"""report: every scenario side by side -> reports/summary.md, metrics/summary.json, reports/recall_at_k.png."""
from datetime import date
from pathlib import Path
import os
import platform

from catalog_search.io import write_json
from catalog_search.params import load_params
from catalog_search.report import markdown, plot_recall, summarise

if __name__ == "__main__":
    scenarios = load_params()["train"]["scenarios"]
    summary = summarise(scenarios, Path("metrics/eval"), Path("metrics/train"))
    write_json("metrics/summary.json", summary)
    header = f"# Scenario comparison\n\nTest split; {date.today()}; {platform.machine()}, {os.cpu_count()} CPU cores"
    Path("reports/summary.md").write_text(markdown(summary, header + "\n"))
    plot_recall(scenarios, Path("reports/recall_at_k"), Path("reports/recall_at_k.png"))
    print(markdown(summary))
