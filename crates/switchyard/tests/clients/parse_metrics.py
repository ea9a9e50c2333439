"""Reads a Prometheus text exposition on stdin with the Prometheus client's own parser and
prints one JSON object: {"types": {family: type}, "samples": [[name, labels, value], ...]}.
A malformed exposition makes the parser raise, and the script fail."""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families

types = {}
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    for s in family.samples:
        value = s.value if math.isfinite(s.value) else str(s.value)
        samples.append([s.name, s.labels, value])
print(json.dumps({"types": types, "samples": samples}))
