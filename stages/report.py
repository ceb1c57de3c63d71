"""report: every scenario side by side -> reports/summary.md, metrics/summary.json, reports/recall_at_k.png."""
import os
import platform
from datetime import date
from pathlib import Path

from catalog_search.io import write_json, write_text
from catalog_search.params import load_params
from catalog_search.report import markdown, plot_recall, summarise

if __name__ == "__main__":
    scenarios = load_params()["train"]["scenarios"]
    summary = summarise(scenarios, Path("metrics/eval"), Path("metrics/train"))
    write_json("metrics/summary.json", summary)
    header = f"# Scenario comparison\n\nTest split; {date.today()}; {platform.machine()}, {os.cpu_count()} CPU cores"
    write_text("reports/summary.md", markdown(summary, header + "\n"))
    plot_recall(scenarios, Path("reports/recall_at_k"), Path("reports/recall_at_k.png"))
    print(markdown(summary))
