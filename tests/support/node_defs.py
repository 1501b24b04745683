"""One node definition of /object_info read the way ComfyUI's server and web frontend read it:
inputs in order, widgets against sockets, 'control after generate' values, outputs."""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # ComfyUI 0.33's V3 dynamic combo (a widget with nested inputs)


class NodeDef:
    """One /object_info entry: ordered inputs, widget/socket split, outputs."""

    def __init__(self, info: dict):
        self.info = info
        order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
        self.inputs = []  # (name, type, options, optional), in the server's order
        for section in ("required", "optional"):
            specs = info["input"].get(section) or {}
            for name in order.get(section, specs):
                spec = specs[name]
                typ, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
                if isinstance(typ, list):  # V1 combo: the options are the type
                    typ, opts = "COMBO", dict(opts, options=typ)
                self._add(name, typ, opts, section == "optional")
        self.outputs = list(info.get("output") or [])

    def _add(self, name, typ, opts, optional) -> None:
        """One input; a V3 dynamic combo (0.33's SaveVideo format) as the flat widgets that
        ComfyUI and its frontend still accept from earlier versions' files: the combo, then
        the required inputs of its first option (SaveVideo: format, codec)."""
        if self.spec(name) is not None:  # 0.33 also lists the flat codec as a hidden optional
            return
        if typ != DYNAMIC_COMBO:
            self.inputs.append((name, typ, opts, optional))
            return
        options = opts.get("options") or []
        self.inputs.append((name, "COMBO", dict(opts, options=[o["key"] for o in options]), optional))
        nested = (options[0].get("inputs") or {}).get("required", {}) if options else {}
        for sub, spec in nested.items():
            sub_typ, sub_opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
            self._add(sub, sub_typ, sub_opts, optional)

    def spec(self, name):
        for entry in self.inputs:
            if entry[0] == name:
                return entry
        return None

    @staticmethod
    def is_widget(typ, opts) -> bool:
        if opts.get("forceInput"):
            return False
        return typ in WIDGET_TYPES or "widgetType" in opts or any(t in WIDGET_TYPES for t in str(typ).split(","))

    @property
    def required(self):
        return [n for n, _, _, opt in self.inputs if not opt]

    @property
    def widgets(self):
        return [(n, t, o) for n, t, o, _ in self.inputs if self.is_widget(t, o)]

    @staticmethod
    def has_control(name, typ, opts) -> bool:
        """The frontend adds a 'control after generate' widget value after this one."""
        if typ == "INT" or opts.get("widgetType") == "INT":
            return bool(opts.get("control_after_generate", name in ("seed", "noise_seed")))
        return bool(opts.get("control_after_generate", False))
