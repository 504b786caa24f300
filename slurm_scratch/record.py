"""Frozen records for the modules the hooks import.

A frozen dataclass would do, but `import dataclasses` costs ~12 ms on Debian's python3 (it pulls in
`inspect`, `re`, `ast`), three times a whole `mkdir && chown` in bash; the Prolog cannot pay that.
Fields are the class annotations, in order; values are set once, by keyword. (No `typing` import
either: it costs ~8 ms.)
"""

from __future__ import annotations


class Record:
    __slots__ = ()

    def __init__(self, **values: object) -> None:
        names = self.field_names()
        unknown = set(values) - set(names)
        missing = [name for name in names if name not in values]
        if unknown or missing:
            raise TypeError(f"{type(self).__name__}: unknown {sorted(unknown)}, missing {missing}")
        for name in names:
            object.__setattr__(self, name, values[name])

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for name in klass.__dict__.get("__annotations__", {}):
                if name not in names:
                    names.append(name)
        return tuple(names)

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.field_names()}

    def replace(self, **changes: object) -> "Record":
        return type(self)(**{**self.as_dict(), **changes})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.as_dict() == other.as_dict()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.as_dict().values())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items())
        return f"{type(self).__name__}({fields})"
