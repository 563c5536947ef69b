"""Per-device variables (SIP user, password, display name per MAC) from CSV or YAML.

CSV: a header row whose first column is `mac`; every other column is a variable.
YAML: a mapping from MAC to a mapping of variables.
MACs may be written in any usual notation; a bad MAC or a repeated one is
refused with the file and line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import yaml

from ..config import duplicate_keys
from ..macros import MacError, normalize_mac

DeviceVariables = dict[str, dict[str, str]]


class VariablesError(Exception):
    def __init__(self, file: str, line: int | None, reason: str) -> None:
        self.file, self.line, self.reason = file, line, reason
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {reason}")


def load_variables(path: Path) -> DeviceVariables:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise VariablesError(name, None, f"cannot read: {e.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return _from_yaml(name, text)
    return _from_csv(name, text)


def _from_csv(name: str, text: str) -> DeviceVariables:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return {}
    header = [h.strip() for h in header]
    if len(header) == 1 and ";" in header[0]:
        raise VariablesError(name, 1, "the header is separated by ';': this file must be "
                             "comma-separated (save it as CSV with ',')")  # fmt: skip
    if not header or header[0].lower() != "mac":
        raise VariablesError(name, 1, "the first column of the header must be 'mac'")
    out: DeviceVariables = {}
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise VariablesError(name, line, f"{len(row)} columns, the header has {len(header)}")
        mac = _mac(name, line, row[0])
        if mac in out:
            raise VariablesError(name, line, f"MAC {mac} appears twice")
        out[mac] = {k: v for k, v in zip(header[1:], row[1:], strict=True)}
    return out


def _from_yaml(name: str, text: str) -> DeviceVariables:
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise VariablesError(
            name, mark.line + 1 if mark else None, f"not valid YAML: {e}"
        ) from None
    if data is None:
        return {}
    dup = duplicate_keys(root)
    if dup:
        raise VariablesError(name, dup[0][1], f"{dup[0][0]}: given twice")
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise VariablesError(name, 1, "must be a mapping from MAC to variables")
    out: DeviceVariables = {}
    for knode, _ in root.value:
        line = knode.start_mark.line + 1
        key = str(knode.value)
        mac = _mac(name, line, key)
        values = data.get(key, data.get(_yaml_key(key)))
        if not isinstance(values, dict):
            raise VariablesError(name, line, f"variables of {mac} must be a mapping")
        if mac in out:
            raise VariablesError(name, line, f"MAC {mac} appears twice")
        out[mac] = {str(k): "" if v is None else str(v) for k, v in values.items()}
    return out


def _yaml_key(key: str) -> object:
    return yaml.safe_load(key)


def _mac(name: str, line: int, text: str) -> str:
    try:
        return normalize_mac(text)
    except MacError as e:
        raise VariablesError(name, line, str(e)) from None
