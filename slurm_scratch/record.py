"""The one record style of the product: frozen records, for the hooks' modules and all others.

Not dataclasses: `import dataclasses` pulls in `inspect`, `re` and `ast`, more than a whole
`mkdir && chown` in bash costs, and the Prolog cannot pay that (bench/ has the figures); nor
`typing`. Fields are the class annotations, in order; a class attribute of the same name is the
field's default (Factory(make) for a fresh mutable one per record). Values are given by keyword
or, in field order, by position, and set once.
"""

from __future__ import annotations


class Factory:
    """A default made anew for each record (like dataclasses.field(default_factory=...))."""

    __slots__ = ("make",)

    def __init__(self, make) -> None:
        self.make = make


_MISSING = object()


class Record:
    __slots__ = ()

    def __init__(self, *args: object, **values: object) -> None:
        cls = type(self)
        names, defaults = cls.__dict__.get("_fields_") or cls._read_fields()
        if args:
            if len(args) > len(names) or any(name in values for name in names[: len(args)]):
                raise TypeError(f"{cls.__name__}: {len(args)} positional values for fields {list(names)} (or given twice)")
            values = {**dict(zip(names, args)), **values}
        unknown = set(values) - set(names)
        missing = [name for name in names if name not in values and name not in defaults]
        if unknown or missing:
            raise TypeError(f"{cls.__name__}: unknown {sorted(unknown)}, missing {missing}")
        for name in names:
            value = values.get(name, _MISSING)
            if value is _MISSING:
                value = defaults[name]
                if isinstance(value, Factory):
                    value = value.make()
            object.__setattr__(self, name, value)

    @classmethod
    def _read_fields(cls) -> tuple[tuple[str, ...], dict[str, object]]:
        """The field names and defaults, read once per class from the annotations."""
        names = cls.field_names()
        defaults = {}
        for name in names:
            for klass in cls.__mro__:
                if name in klass.__dict__:
                    defaults[name] = klass.__dict__[name]
                    break
        fields = (names, defaults)
        type.__setattr__(cls, "_fields_", fields)
        return fields

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for name in klass.__dict__.get("__annotations__", {}):
                if name not in names:
                    names.append(name)
        return tuple(names)

    def as_dict(self) -> dict[str, object]:
        names = (type(self).__dict__.get("_fields_") or type(self)._read_fields())[0]
        return {name: getattr(self, name) for name in names}

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
