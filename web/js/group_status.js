// CFG Parallel Group Status: show the node's text summary on the node itself (read-only).
// The summary arrives as the node's UI output {"text": [...]} (the timeline picture as
// {"images": [...]}, which the frontend shows by itself). Works in frontend 1.32 and 1.47.
import { app } from "../../../scripts/app.js"; // served at /extensions/<pack>/js/

const STATUS_TYPES = new Set(["CFGParallelMultiGPU_GroupStatus", "CFGParallelGroupStatus"]);

function statusWidget(node) {
  let widget = node.widgets?.find((w) => w.name === "status_text");
  if (widget) return widget;
  const el = document.createElement("textarea");
  el.readOnly = true;
  el.spellcheck = false;
  el.placeholder = "Run the prompt to read the worker group's status.";
  el.className = "comfy-multiline-input cfgp-status";
  Object.assign(el.style, { fontFamily: "monospace", fontSize: "11px", whiteSpace: "pre", overflow: "auto" });
  widget = node.addDOMWidget("status_text", "cfgp_status", el, {
    getValue: () => el.value,
    setValue: (v) => { el.value = v ?? ""; },
    getMinHeight: () => 160,
    serialize: false,
  });
  widget.serialize = false;
  return widget;
}

app.registerExtension({
  name: "comfyui-cfg-parallel.GroupStatus",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!STATUS_TYPES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      statusWidget(this);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(message?.text) ? message.text.join("\n") : (message?.text ?? "");
      const widget = statusWidget(this);
      widget.value = text;
      if (widget.element) widget.element.value = text;
      this.setDirtyCanvas?.(true, true);
    };
  },
});
