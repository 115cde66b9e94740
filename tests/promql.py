"""The series names a PromQL expression reads: what the dashboard and alert checks compare with what exists.
(tests/ is on sys.path for every test.)"""

from __future__ import annotations

import re

_FUNCTIONS = {"sum", "rate", "irate", "increase", "histogram_quantile", "max", "min", "avg", "count", "by", "on",
              "ignoring", "group_left", "group_right", "without", "and", "or", "unless", "label_values", "bool",
              "offset", "abs", "clamp_min", "clamp_max", "topk", "bottomk", "delta", "deriv", "absent", "le"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (label matchers, groupings, ranges and functions removed)."""
    text = re.sub(r"label_values\(([^,]+),\s*\w+\)", r"\1", expr)  # Grafana's: the second argument is a label
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|on|ignoring|without|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", text))
    return {n for n in names if n not in _FUNCTIONS and not re.fullmatch(r"[0-9.e]+", n)}
