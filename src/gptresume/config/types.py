"""Type checks for values read from YAML against dataclass and TrainingArguments annotations, and the
did-you-mean hint for unknown keys. Pure functions: no torch, no transformers."""

from __future__ import annotations

import difflib
import enum
import math
import typing
from typing import Any


def _unknown_key(key: str, valid: list[str], where: str) -> str:
    from gptresume.config.aliases import foreign_name_hint

    foreign = foreign_name_hint(key, where, valid)  # names from other trainers: the right one, not the closest
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if foreign:
        hint = foreign
    elif close:
        hint = f"; did you mean {close[0]!r}?"
    elif len(valid) <= 12:
        hint = f"; valid keys: {', '.join(sorted(valid))}"
    else:
        hint = "; see the field names of transformers.TrainingArguments" if where == "train" else ""
    return f"{where}: unknown key {key!r}{hint}"


def check_type(value: Any, hint: Any, strict: bool = True) -> tuple[bool, Any]:
    """Is `value` (from YAML) acceptable for annotation `hint`? Returns (ok, value coerced where safe).

    YAML reads `5e-4` (no dot) as a string, so numeric strings are accepted for float fields.
    With strict=False, annotations we do not understand are accepted (HF validates them later).
    """
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(hint)
        if value is None:
            return type(None) in args, value
        for arg in args:
            if arg is type(None):
                continue
            ok, coerced = check_type(value, arg, strict)
            if ok:
                return True, coerced
        return False, value
    if origin in (list, typing.List):  # noqa: UP006
        if not isinstance(value, list):
            return False, value
        (item,) = typing.get_args(hint) or (Any,)
        results = [check_type(v, item, strict) for v in value]
        return all(ok for ok, _ in results), [v for _, v in results]
    if origin in (dict, typing.Dict):  # noqa: UP006
        return isinstance(value, dict), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return not non_finite(value), value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return False, value
            return not non_finite(number), number  # "nan", "inf", "-Infinity" parse; never a setting
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if hint is dict:
        return isinstance(value, dict), value
    if hint is type(None):
        return value is None, value
    if isinstance(hint, type) and issubclass(hint, str):  # str-valued enums such as IntervalStrategy
        if value is False and issubclass(hint, enum.Enum) and "no" in {m.value for m in hint}:
            return True, "no"  # YAML 1.1 reads `eval_strategy: no` as false; Transformers means the string "no"
        return isinstance(value, str), value
    return (not strict), value


def non_finite(value: Any) -> bool:
    """NaN or an infinity (a float, or a string float() reads as one: YAML `.nan`, `.inf`; `--set x=nan`)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and not math.isfinite(value)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return repr(value)


FINITE_FIX = "NaN and infinity are never a setting; give a finite number"


def finite_problems(value: Any, path: str) -> list[str]:
    """One problem per NaN or infinity in `value`, at any depth of dicts and lists, each naming its path
    (`health.spike.std`, `model.peft.lora_dropout`, `train.lr_scheduler_kwargs.min_lr`). Used for every section of
    the config (config/load.py, so no field can be forgotten) and for the script API's numeric arguments (e.g.
    `finite_problems(every_minutes, "gptresume.train(every_minutes=)")`). Only real floats count here: a string
    "nan" is a number only where a float is asked for, and `type_problem` reports it there."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in finite_problems(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in finite_problems(v, f"{path}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: {_shown(value)} is not a finite number; {FINITE_FIX}"]
    return []


def type_problem(path: str, value: Any, hint: Any) -> str:
    """The message for a value `check_type` refused: a NaN or infinity given as a string where a number is asked
    for gets the finite-number message, anything else the expected type."""
    if isinstance(value, str) and non_finite(value):
        return f"{path}: {value!r} is not a finite number; {FINITE_FIX}"
    return f"{path}: expected {_type_name(hint)}, got {value!r}"


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in typing.get_args(hint)]
        return " or ".join("null" if n == "NoneType" else n for n in names)
    if origin is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))
