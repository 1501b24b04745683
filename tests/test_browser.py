"""The real ComfyUI web frontend, in Debian's Chromium driven by Playwright.

Opens the test server's frontend (the pack and the test-only nodes loaded), then:
- finds the pack's nodes in LiteGraph's registry (new ids, and the old ids as deprecated
  aliases) and through the node search box by what users type ("multi gpu", "parallel",
  "STG") and by name;
- checks the node help pages are served where the frontend fetches them;
- loads every UI workflow (app.loadGraphData, as when a file is dropped on the canvas) and
  checks the missing-node dialog, node sizes, and that the frontend turns the graph into
  exactly the API version (app.graphToPrompt); loads the 0.1 example files (old ids);
- finds the example workflows and their thumbnails where the template browser looks
  (/workflow_templates) and opens the template browser on the pack;
- queues the tiny demos from the page (app.queuePrompt) and polls /history until they end;
  after a parallel prompt, the Group Status node shows its text and timeline picture.
CFGP_WRITE_THUMBNAILS=1 rewrites example_workflows/<title>.jpg from the load screenshots.
Screenshots go to test-artifacts/browser/ (gitignored).

The suite runs on each ComfyUI (scripts/test.sh), so this runs in frontend 1.32.9
(ComfyUI 0.3.75) and 1.47.10 (0.29). 0.3.75 has no LTX-2 audio+video nodes: loading the
LTX-2 workflows shows the missing-node dialog there, and the tests assert that the only
missing types are those LTX-2 core nodes (workflows/build.py: LTX2_CORE_TYPES). On 0.29
every workflow loads with no missing node, and the tiny LTX-2 workflow is queued from
the page too.

Every test gets its own browser context and page; the frontend settings the tests rely on
are pinned in the server's user settings; waits are Playwright's ``expect`` on role-based
locators. A failing test leaves a screenshot and the browser console in
test-artifacts/browser/failures/.

Needs /usr/bin/chromium and the Python package playwright (scripts/setup_env.sh installs
both); never `playwright install`. Skipped with the reason when either is missing (a
failure under CI=true: tests/conftest.py).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from devkit.paths import owned_tempdir
from support.paths import NEEDS_029, NEEDS_BROWSER, comfyui_version, has_ltx2_av
from support.node_defs import NodeDef
from support.workflow_files import (EXAMPLE_NAMES, LEGACY_DIR, LEGACY_NAMES, LTX2_WORKFLOWS, NAMES, build, load_api,
                                    load_ui, strip_meta)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser" / f"comfyui-{comfyui_version() or 'unknown'}"  # per version
CHROMIUM = os.environ.get("CFGP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
PACK_NODES = {"CFGParallelMultiGPU_PolicyBuilder": "CFGPolicy Builder",
              "CFGParallelMultiGPU_LTX2VideoGuidance": "LTX-2 Video Guidance (CFG, STG, modality)",
              "CFGParallelMultiGPU_LTX2AudioGuidance": "LTX-2 Audio Guidance (CFG, STG, modality)",
              "CFGParallelMultiGPU_MultiBranchGuider": "Multi-Branch Guider",
              "CFGParallelMultiGPU_LTX2Sampler": "LTX2 Sampler",
              "CFGParallelMultiGPU_GroupStatus": "CFG Parallel Group Status",
              "CFGParallelMultiGPU_Model": "CFG Parallel",
              "CFGParallelMultiGPU_VAEDecode": "VAE Decode (Multi-GPU)"}
OLD_IDS = {"CFGPolicyBuilder": "CFGParallelMultiGPU_PolicyBuilder", "MultiBranchGuider": "CFGParallelMultiGPU_MultiBranchGuider",
           "LTX2Sampler": "CFGParallelMultiGPU_LTX2Sampler", "CFGParallelGroupStatus": "CFGParallelMultiGPU_GroupStatus"}
# What a user types -> the nodes it must find (display names). "STG": the nodes that set it
# (the LTX-2 guidance nodes, by their display names); the builder too where the frontend
# reads search_aliases (1.47; 1.32 searches ids and display names only).
SEARCHES = {"multi gpu": set(PACK_NODES.values()), "parallel": set(PACK_NODES.values()),
            "STG": {"LTX-2 Video Guidance (CFG, STG, modality)", "LTX-2 Audio Guidance (CFG, STG, modality)"}}
STG_BY_ALIAS = {"CFGPolicy Builder", "Multi-Branch Guider", "LTX2 Sampler"}
THUMBNAILS = os.environ.get("CFGP_WRITE_THUMBNAILS") == "1"  # rewrite example_workflows/<title>.jpg
APP_READY = ("() => window.app && window.app.graph && window.LiteGraph && "
             "Object.keys(LiteGraph.registered_node_types).length > 100")

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason=f"{NEEDS_BROWSER} the Python package playwright is missing (scripts/setup_env.sh "
                              f"installs it)"),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"{NEEDS_BROWSER} {CHROMIUM} is missing (scripts/setup_env.sh installs Debian's "
                              f"chromium as root)"),
]

# Frontend settings the tests rely on (ids unknown to a frontend version are ignored there).
PINNED_SETTINGS = {
    "Comfy.TutorialCompleted": True,            # no first-run dialog
    "Comfy.NodeSearchBoxImpl": "default",       # the search box the search test drives
    "Comfy.Workflow.ShowMissingNodesWarning": True,   # 1.32: the dialog the LTX-2 load test expects on 0.3.75
    "Comfy.Workflow.ShowMissingModelsWarning": False,  # the user workflows name models the test server lacks
    "Comfy.VueNodes.Enabled": False,            # classic LiteGraph nodes (sizes, widgets)
    "Comfy.Minimap.Visible": False,             # screenshots and template thumbnails: the graph only
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.RightSidePanel.IsOpen": False,       # 1.47 keeps the help panel open (server-side setting)
}


class Frontend:
    """One page of the ComfyUI frontend, with what it logged."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1920, "height": 1080})
        self.page = self.context.new_page()
        self.page_errors: list[str] = []
        self.console: list[str] = []
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        # Dismiss the "Introducing Nodes 2.0" banner (it covers the top of screenshots).
        self.page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        t0 = time.monotonic()
        self.page.goto(url, wait_until="domcontentloaded", timeout=120_000)
        self.page.wait_for_function(APP_READY, timeout=120_000)
        self.load_s = time.monotonic() - t0

    DIALOGS = ".p-dialog:not([role=search])"  # the node search box is a dialog too

    def dialog_texts(self) -> list[str]:
        """Texts of the visible dialogs (the missing-node warning is one)."""
        return self.page.evaluate("""(sel) => Array.from(document.querySelectorAll(sel))
            .filter(d => d.offsetParent !== null || d.getClientRects().length).map(d => d.innerText)""", self.DIALOGS)

    def close_dialogs(self):
        for _ in range(5):
            buttons = [b for b in self.page.query_selector_all(f"{self.DIALOGS} .p-dialog-close-button") if b.is_visible()]
            if not buttons:
                break
            buttons[0].click(timeout=5000)
            self.page.wait_for_timeout(250)
        self.page.keyboard.press("Escape")  # closes a node search box left open

    def load(self, ui: dict, expect_dialog: bool) -> list[str]:
        """app.loadGraphData(ui); returns the texts of the dialogs it opened (then closes them)."""
        self.close_dialogs()
        self.page.evaluate("(g) => app.loadGraphData(g)", ui)
        if expect_dialog:
            self.page.wait_for_selector(self.DIALOGS, state="visible", timeout=15_000)
        else:
            self.page.wait_for_timeout(800)  # a dialog, if any, opens within a few frames
        texts = self.dialog_texts()
        self.close_dialogs()
        return texts

    def graph_nodes(self) -> list[dict]:
        return self.page.evaluate("""() => app.graph.nodes.map(n => ({
            id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
            min_size: Array.from(n.computeSize())}))""")

    def graph_to_prompt(self) -> dict:
        return self.page.evaluate("async () => (await app.graphToPrompt()).output")

    def close(self):
        self.context.close()

    def save_failure(self, test_name: str) -> None:
        """A screenshot and the browser console of a failed test, under test-artifacts/browser/failures/."""
        folder = ARTIFACTS / "failures"
        folder.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        try:
            self.page.screenshot(path=str(folder / f"{stem}.png"))
        except Exception as exc:  # the page may be gone; the console still helps
            self.console.append(f"[screenshot failed] {exc}")
        (folder / f"{stem}.console.txt").write_text("\n".join(self.console + ["--- page errors ---"] + self.page_errors))

    def screenshot(self, name: str, fit: bool = True):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if fit:  # the whole graph (groups included), clear of the side bar and the top menu
            self.page.evaluate("""() => { const c = app.canvas, ds = c.ds;
                const boxes = app.graph.nodes.map(n => [n.pos[0], n.pos[1] - 30, n.pos[0] + n.size[0], n.pos[1] + n.size[1]])
                    .concat((app.graph.groups || []).map(g => [g.pos[0], g.pos[1], g.pos[0] + g.size[0], g.pos[1] + g.size[1]]));
                if (!boxes.length) return;
                const b = boxes.reduce((a, x) => [Math.min(a[0], x[0]), Math.min(a[1], x[1]), Math.max(a[2], x[2]),
                                                  Math.max(a[3], x[3])]);
                const W = c.canvas.width / (window.devicePixelRatio || 1), H = c.canvas.height / (window.devicePixelRatio || 1);
                const left = 70, top = 110, pad = 10;
                const s = Math.min((W - left - 2 * pad) / (b[2] - b[0]), (H - top - 2 * pad) / (b[3] - b[1]), 1.25);
                ds.scale = s; ds.offset[0] = (left + pad) / s - b[0]; ds.offset[1] = (top + pad) / s - b[1];
                c.setDirty(true, true); }""")
            self.page.wait_for_timeout(400)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    home = owned_tempdir("cfgp_browser_home_")
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=f"{home}/.config", XDG_CACHE_HOME=f"{home}/.cache",
               XDG_DATA_HOME=f"{home}/.local/share")
    with sync_playwright() as pw:
        # Playwright gives the browser a fresh temporary profile (its --user-data-dir).
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, env=env, headless=True)
        try:
            yield b
        finally:
            b.close()
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def pinned_server(comfy_server):
    """The session server, with the frontend settings these tests rely on."""
    comfy_server.pin_frontend_settings(PINNED_SETTINGS)
    return comfy_server


@pytest.fixture
def frontend(request, browser, pinned_server):
    """A fresh context and page for each test; on failure its screenshot and console are saved."""
    fe = Frontend(browser, pinned_server.url)
    yield fe
    report = getattr(request.node, "rep_call", None) or getattr(request.node, "rep_setup", None)
    if report is not None and report.failed:
        fe.save_failure(request.node.name)
    fe.close()


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def prompt_matches_api(from_page: dict, api: dict, object_info: dict, skip_types=()) -> list[str]:
    """Differences between the frontend's prompt and the API file, for the node types the
    server has. Inputs the server does not define (frontend-only widgets, e.g. Preview as
    Text's 'preview') are ignored; an input the file leaves out must hold its default."""
    problems = []
    api = strip_meta(api)
    for nid, node in api.items():
        ct = node["class_type"]
        if ct in skip_types:
            continue
        got = from_page.get(nid)
        if got is None:
            problems.append(f"node {nid} ({ct}) is not in the frontend's prompt")
            continue
        if got.get("class_type") != ct:
            problems.append(f"node {nid}: frontend says {got.get('class_type')}, file says {ct}")
            continue
        d = NodeDef(object_info[ct])
        for name in set(got["inputs"]) | set(node["inputs"]):
            spec = d.spec(name)
            if spec is None:
                continue
            mine, theirs = node["inputs"].get(name, "<absent>"), got["inputs"].get(name, "<absent>")
            if mine == "<absent>" and theirs == spec[2].get("default"):
                continue
            if not _same(mine, theirs):
                problems.append(f"node {nid} ({ct}).{name}: file {mine!r}, frontend {theirs!r}")
    extra = set(from_page) - set(api)
    if extra:
        problems.append(f"frontend prompt has extra nodes {sorted(extra)}")
    return problems


def too_small(ui: dict, nodes: list[dict]) -> list[str]:
    """Nodes of a known type whose size in the file is below what the frontend needs
    (their widgets would be clipped)."""
    sizes = {str(n["id"]): n["size"] for n in ui["nodes"]}  # frontend 1.47 gives string ids
    return [f"node {n['id']} ({n['type']}) is {sizes[str(n['id'])]}, the frontend needs {n['min_size']}"
            for n in nodes if n["registered"] and n["type"] not in build.VIRTUAL_TYPES
            and (sizes[str(n["id"])][0] + 0.5 < n["min_size"][0] or sizes[str(n["id"])][1] + 0.5 < n["min_size"][1])]


def _same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


# ---------------------------------------------------------------------------------------
def test_pack_nodes_registered_in_frontend(frontend):
    """Every node by its new id and display name; the old ids are registered too (saved
    workflows), flagged deprecated, so the node library and search leave them out."""
    found = frontend.page.evaluate("""(types) => Object.fromEntries(types.map(t => {
        const n = LiteGraph.registered_node_types[t];
        return [t, n ? {title: n.title || null, deprecated: !!(n.nodeData && n.nodeData.deprecated)} : null]; }))""",
                                   list(PACK_NODES) + list(OLD_IDS))
    for node_type, display in PACK_NODES.items():
        assert found[node_type] and found[node_type]["title"] == display, (node_type, found[node_type])
        assert not found[node_type]["deprecated"]
    for old, new in OLD_IDS.items():
        assert found[old] and found[old]["title"] == PACK_NODES[new] and found[old]["deprecated"], (old, found[old])
    assert not frontend.page_errors, frontend.page_errors


def _search(page, query: str) -> list[str]:
    """Open the node search box (the frontend's own command), type ``query``; the options' texts."""
    from playwright.sync_api import expect

    page.evaluate("() => app.extensionManager.command.execute('Workspace.SearchBox.Toggle')")
    box = page.get_by_role("search").locator("input[role=combobox]")  # not the node preview's widgets
    expect(box).to_be_visible(timeout=15_000)
    box.fill(query)
    expect(page.get_by_role("option").first).to_be_visible(timeout=15_000)
    page.wait_for_timeout(300)  # the list settles after the last keystroke
    return page.get_by_role("option").all_inner_texts()


def _title(option_text: str) -> str:
    """A search result's node title: its first non-empty line."""
    return next((line.strip() for line in option_text.splitlines() if line.strip()), "")


def test_node_search_finds_pack_nodes_by_what_users_type(frontend, object_info):
    """'multi gpu' and 'parallel' find every node of the pack, 'STG' the nodes that set it (and,
    where the server sends search aliases, the builder, guider and sampler); the deprecated ids
    never show up."""
    page = frontend.page
    frontend.close_dialogs()
    found = {}
    aliases = "search_aliases" in object_info["CFGParallelMultiGPU_PolicyBuilder"]
    for query, expected in SEARCHES.items():
        if query == "STG" and aliases:
            expected = expected | STG_BY_ALIAS
        texts = _search(page, query)
        titles = [_title(t) for t in texts]
        found[query] = {d for d in PACK_NODES.values() if d in titles}
        if query == "multi gpu":
            frontend.screenshot("node_search_multi_gpu", fit=False)
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
        assert expected <= found[query], f"search {query!r} misses {sorted(expected - found[query])}: {titles[:20]}"
        # each result appears once: the deprecated aliases (same display names) are hidden
        for d in expected:
            assert titles.count(d) <= 1, (query, d, titles[:20])


def test_node_search_adds_pack_nodes(frontend):
    """Type each display name, pick the result: the node appears, and the result names the pack."""
    from playwright.sync_api import expect

    page = frontend.page
    frontend.close_dialogs()
    page.evaluate("() => { app.graph.clear(); app.canvas.ds.scale = 0.6; app.canvas.ds.offset = [0, 0]; }")
    for i, (node_type, display) in enumerate(PACK_NODES.items()):
        _search(page, display.split(" (")[0])  # what one types; Fuse matches words near the start only
        option = page.get_by_role("option").filter(has_text=display).first
        expect(option).to_be_visible(timeout=15_000)
        expect(option).to_contain_text("comfyui-cfg-parallel")  # the badge names the pack
        option.click()
        page.wait_for_function("(t) => app.graph.nodes.some(n => n.type === t)", arg=node_type, timeout=15_000)
        expect(page.get_by_role("search").locator("input[role=combobox]")).to_be_hidden(timeout=15_000)
        # Frontend 1.47 attaches the picked node to the pointer until a click on the canvas
        # places it (opening the next search would drop it); in 1.32 this click only deselects.
        spot = {"x": 250 + 300 * (i % 5), "y": 300 + 380 * (i // 5)}
        page.mouse.move(**spot)
        page.mouse.click(**spot)
    types = page.evaluate("() => app.graph.nodes.map(n => n.type)")
    assert sorted(types) == sorted(PACK_NODES)
    frontend.screenshot("node_search_result")


def test_node_help_pages_are_served_where_the_frontend_looks(frontend, object_info):
    """The frontend fetches a custom node's help from /extensions/<pack>/docs/<node id>.md (the
    pack from the node's python_module, custom_nodes.<folder>)."""
    for node_type in list(PACK_NODES) + list(OLD_IDS):
        module = object_info[node_type]["python_module"]
        assert module.split(".")[:2] == ["custom_nodes", "comfyui-cfg-parallel"], module
        url = f"/extensions/comfyui-cfg-parallel/docs/{node_type}.md"
        got = frontend.page.evaluate("async (u) => { const r = await fetch(u); return [r.status, await r.text()]; }", url)
        assert got[0] == 200 and got[1].startswith(("# ", "> **Deprecated id**")), (url, got[0], got[1][:80])


def test_node_help_page_opens_in_the_frontend(frontend, pinned_server):
    """Select a Multi-Branch Guider, press the selection toolbox's info button: the frontend
    shows the pack's help page for it (web/docs/<node id>.md)."""
    from playwright.sync_api import expect

    page = frontend.page
    frontend.close_dialogs()
    page.evaluate("""() => { app.graph.clear(); app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0];
        const n = LiteGraph.createNode('CFGParallelMultiGPU_MultiBranchGuider'); n.pos = [500, 300];
        app.graph.add(n); app.canvas.setDirty(true, true); }""")
    button = page.locator("[data-testid=info-button]").first
    for _ in range(4):  # a real click on the node's title selects it and brings up the selection toolbox
        box = page.evaluate("""() => { const n = app.graph.nodes[0], r = app.canvas.canvas.getBoundingClientRect();
            const [x, y] = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + 40, n.pos[1] - 15]);
            return [r.left + x, r.top + y]; }""")
        page.mouse.click(*box)
        try:
            expect(button).to_be_visible(timeout=5_000)
            break
        except AssertionError:
            frontend.close_dialogs()
    expect(button).to_be_visible(timeout=5_000)
    button.click()
    try:
        expect(page.get_by_text("Compared with core's MultiGPU CFG Split").first).to_be_visible(timeout=15_000)
        frontend.screenshot("node_help_page", fit=False)
    finally:  # the panel's open state is a server-side setting: leave it closed for the next tests
        page.wait_for_timeout(500)
        pinned_server.pin_frontend_settings(PINNED_SETTINGS)


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_loads(name, frontend, object_info):
    ui = load_ui(name)
    used = {n["type"] for n in ui["nodes"]} - build.VIRTUAL_TYPES
    absent = used - set(object_info)
    frontend.page_errors.clear()
    dialogs = frontend.load(ui, expect_dialog=bool(absent))
    nodes = frontend.graph_nodes()
    assert len(nodes) == len(ui["nodes"])
    not_registered = {n["type"] for n in nodes if not n["registered"]}
    if name in LTX2_WORKFLOWS and absent:
        # ComfyUI 0.3.75 lacks the LTX-2 audio+video core nodes: exactly those are missing,
        # and the frontend's missing-node dialog lists them (and nothing of this pack).
        assert absent <= build.LTX2_CORE_TYPES, absent
        assert not_registered == absent
        assert len(dialogs) == 1 and "missing" in dialogs[0].lower(), dialogs
        listed = {t for t in used if t in dialogs[0]}
        assert absent <= listed and not (listed & set(PACK_NODES) - absent), dialogs[0]
    else:
        assert not absent, f"node types missing on the server: {absent}"
        assert not not_registered, f"frontend shows missing nodes: {not_registered}"
        assert not dialogs, f"unexpected dialog: {dialogs}"
    assert not too_small(ui, nodes)
    # The frontend turns the graph into exactly the API file (for the types it knows).
    problems = prompt_matches_api(frontend.graph_to_prompt(), load_api(name), object_info, skip_types=absent)
    assert not problems, f"{name}:\n" + "\n".join(problems)
    assert not frontend.page_errors, frontend.page_errors
    frontend.screenshot(f"workflow_{name}")
    if THUMBNAILS and name in EXAMPLE_NAMES:
        # the card shows the graph as a user with the models has it: no missing-model marks, no toasts
        frontend.page.evaluate("""() => { for (const n of app.graph.nodes) { n.has_errors = false; }
            document.querySelectorAll('.p-toast, .p-toast-message, [role=alert], [role=status]')
                .forEach(e => { e.style.display = 'none'; });
            app.canvas.setDirty(true, true); }""")
        frontend.page.wait_for_timeout(300)
        shot = frontend.screenshot(f"thumbnail_{name}")
        write_thumbnail(shot, REPO / "example_workflows" / f"{EXAMPLE_NAMES[name]}.jpg")


def write_thumbnail(screenshot: Path, target: Path) -> None:
    """The template card's picture: the fitted graph (side bar and menu cut off), 768 px wide."""
    from PIL import Image

    img = Image.open(screenshot).convert("RGB")
    img = img.crop((60, 100, img.width, img.height))
    img = img.resize((768, round(768 * img.height / img.width)), Image.LANCZOS)
    img.save(target, "JPEG", quality=82, optimize=True)


@pytest.mark.parametrize("name", LEGACY_NAMES)
def test_workflow_saved_with_old_ids_loads(name, frontend, object_info):
    """The example workflows as 0.1 saved them (CFGPolicyBuilder, MultiBranchGuider, LTX2Sampler
    without the pack prefix) load with no missing pack node, their widgets in place."""
    ui = json.loads((LEGACY_DIR / f"{name}.json").read_text())
    used = {n["type"] for n in ui["nodes"]} - build.VIRTUAL_TYPES
    absent = used - set(object_info)
    assert absent <= (set() if has_ltx2_av() else build.LTX2_CORE_TYPES), absent
    frontend.page_errors.clear()
    dialogs = frontend.load(ui, expect_dialog=bool(absent))
    nodes = frontend.graph_nodes()
    not_registered = {n["type"] for n in nodes if not n["registered"]}
    assert not_registered == absent, not_registered
    if not absent:
        assert not dialogs, dialogs
    widgets = frontend.page.evaluate("""() => Object.fromEntries(app.graph.nodes.map(n => [String(n.id),
        (n.widgets || []).map(w => w.value)]))""")
    for n in ui["nodes"]:
        if n["type"] in OLD_IDS:
            assert widgets[str(n["id"])][:len(n["widgets_values"])] == n["widgets_values"], n["type"]
    assert not frontend.page_errors, frontend.page_errors
    frontend.screenshot(f"legacy_{name}")


def test_example_workflows_offered_as_templates(frontend):
    """The template browser lists custom node examples from /workflow_templates, shows each
    file name as the card's title, and fetches /api/workflow_templates/<pack>/<name>.json and
    <name>.jpg (the thumbnail)."""
    templates = frontend.page.evaluate("async () => (await fetch('/workflow_templates')).json()")
    pack = next((k for k in templates if k == "comfyui-cfg-parallel"), None)
    assert pack, f"pack not among the templates: {templates}"
    assert sorted(templates[pack]) == sorted(EXAMPLE_NAMES.values())
    by_title = {v: k for k, v in EXAMPLE_NAMES.items()}
    for title in templates[pack]:
        served = frontend.page.evaluate("async (u) => (await fetch(u)).json()",
                                        f"/api/workflow_templates/{pack}/{title}.json")
        assert served == load_ui(by_title[title])
        thumb = frontend.page.evaluate("""async (u) => { const r = await fetch(u);
            return [r.status, r.headers.get('content-type'), (await r.arrayBuffer()).byteLength]; }""",
                                       f"/api/workflow_templates/{pack}/{title}.jpg")
        assert thumb[0] == 200 and thumb[1] == "image/jpeg" and thumb[2] > 5000, (title, thumb)


def test_template_browser_shows_titles_and_thumbnails(frontend):
    """Open the template browser on the pack's tab: three cards with readable titles and their
    thumbnails loaded."""
    from playwright.sync_api import expect

    page = frontend.page
    frontend.close_dialogs()
    thumbs = []
    page.on("response", lambda r: thumbs.append((r.url, r.status))
            if "workflow_templates/comfyui-cfg-parallel/" in r.url and r.url.endswith(".jpg") else None)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.get_by_role("dialog").filter(has_text="comfyui-cfg-parallel").first
    expect(dialog).to_be_visible(timeout=20_000)
    dialog.get_by_text("comfyui-cfg-parallel", exact=True).first.click()
    for title in EXAMPLE_NAMES.values():
        expect(dialog.get_by_text(title).first).to_be_visible(timeout=20_000)
    # the cards fetch <title>.jpg and show it (as a blob: URL once loaded)
    deadline = time.monotonic() + 20
    while len({u for u, st in thumbs if st == 200}) < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert len({u for u, st in thumbs if st == 200}) >= 3, thumbs
    page.wait_for_function("""() => Array.from(document.querySelectorAll('[role=dialog] img'))
        .filter(i => i.complete && i.naturalWidth > 0).length >= 3""", timeout=20_000)
    frontend.screenshot("template_browser", fit=False)


def queue_from_the_page(frontend, server, name: str) -> dict:
    """Load a UI workflow, give its 'nonce' widgets a fresh value, press queue (app.queuePrompt)
    and wait for the history entry; returns it."""
    page = frontend.page
    frontend.load(load_ui(name), expect_dialog=False)
    nonce = int(time.time() * 1000) % 1_000_000 + 1000  # a fresh value: ComfyUI cannot answer from its cache
    page.evaluate("""(nonce) => { for (const n of app.graph.nodes)
        for (const w of n.widgets || []) if (w.name === 'nonce') w.value = nonce; }""", nonce)
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                              timeout=60_000) as response:
        page.evaluate("() => app.queuePrompt(0, 1)")
    body = response.value.json()
    assert response.value.status == 200, body
    entry = server.wait(body["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    nonces = {n["inputs"]["nonce"] for n in entry["prompt"][2].values() if "nonce" in n["inputs"]}
    assert nonces == {nonce}
    page.wait_for_function("(id) => fetch('/history/' + id).then(r => r.json()).then(h => !!h[id])",
                           arg=body["prompt_id"], timeout=30_000)
    return entry


def test_queue_tiny_ltx2_from_the_page(frontend, pinned_server):
    """ComfyUI 0.29: the tiny LTX-2 audio+video workflow, queued from the page, ends with a video
    and an audio latent."""
    if not has_ltx2_av():
        pytest.skip(f"{NEEDS_029} the tiny LTX-2 workflow uses LTX-2 audio+video nodes")
    entry = queue_from_the_page(frontend, pinned_server, "tiny_ltx2_demo")
    shapes = sorted(tuple(pinned_server.saved_latent(entry, node_id=nid).shape) for nid in entry["outputs"])
    assert shapes == [(1, 8, 9, 16), (1, 128, 2, 2, 2)], shapes
    frontend.screenshot("tiny_ltx2_demo_after_run")
    assert not frontend.page_errors, frontend.page_errors


def test_group_status_on_the_node_after_a_parallel_prompt(frontend, pinned_server):
    """A tiny prompt at parallel size 2 queued from the page, with the Group Status after the
    sampler: the node shows its text summary and the timeline picture; SaveImage saved the
    timeline (copied to test-artifacts/browser/group_status_timeline.png)."""
    import shutil

    entry = queue_from_the_page(frontend, pinned_server, "tiny_status_demo")
    prompt = entry["prompt"][2]
    status_id = next(nid for nid, n in prompt.items() if n["class_type"] == "CFGParallelMultiGPU_GroupStatus")
    save_id = next(nid for nid, n in prompt.items() if n["class_type"] == "SaveImage")
    saved = entry["outputs"][save_id]["images"][0]
    path = pinned_server.output_dir / saved.get("subfolder", "") / saved["filename"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / "group_status_timeline.png")
    page = frontend.page
    page.wait_for_function("""(id) => { const n = app.graph.getNodeById(Number(id)) || app.graph.getNodeById(id);
        const w = n && (n.widgets || []).find(w => w.name === 'status_text');
        return w && String(w.value).includes('rank 1:') && n.imgs && n.imgs.length > 0 && n.imgs[0].complete; }""",
                           arg=status_id, timeout=30_000)
    text = page.evaluate("""(id) => { const n = app.graph.getNodeById(Number(id)) || app.graph.getNodeById(id);
        return n.widgets.find(w => w.name === 'status_text').value; }""", status_id)
    assert "rank 0:" in text and "cond×4" in text and "negative×4" in text, text
    frontend.screenshot("group_status_after_run")
    assert not frontend.page_errors, frontend.page_errors


def test_queue_demo_from_the_page(frontend, pinned_server):
    """The tiny demo's UI file, queued from the page, runs on two ranks and saves its latent."""
    entry = queue_from_the_page(frontend, pinned_server, "tiny_demo")
    assert entry["prompt"][2]["7"]["inputs"]["parallel_size"] == 2
    latent = pinned_server.saved_latent(entry, node_id="10")
    assert tuple(latent.shape) == (1, 128, 2, 2, 2)
    frontend.screenshot("tiny_demo_after_run")
    assert not frontend.page_errors, frontend.page_errors


def test_start_up_progress_text_on_the_page(frontend, pinned_server):
    """A first parallel prompt (group shut down before it), queued from the page: the page gets
    the sampler node's progress text from the first second — workers starting, n/N ready, the
    ranks loading the model — and then the result; a screenshot is taken while the workers start."""
    pinned_server.run({"1": {"class_type": "CFGParallelMultiGPU_GroupStatus", "inputs": {"shutdown": True}}})
    page = frontend.page
    page.evaluate("""() => { window.__cfgpTexts = [];
        const api = (window.comfyAPI && window.comfyAPI.api && window.comfyAPI.api.api) || app.api;
        api.addEventListener('progress_text', (e) => window.__cfgpTexts.push(e.detail.text)); }""")
    frontend.load(load_ui("tiny_demo"), expect_dialog=False)
    nonce = int(time.time() * 1000) % 1_000_000 + 2000
    page.evaluate("""(nonce) => { for (const n of app.graph.nodes)
        for (const w of n.widgets || []) if (w.name === 'nonce') w.value = nonce; }""", nonce)
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                              timeout=60_000) as response:
        page.evaluate("() => app.queuePrompt(0, 1)")
    prompt_id = response.value.json()["prompt_id"]
    page.wait_for_function("() => window.__cfgpTexts.some(t => t.includes('starting 2 workers'))", timeout=60_000)
    frontend.screenshot("start_up_progress")  # while the workers start
    entry = pinned_server.wait(prompt_id, timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    page.wait_for_function("() => window.__cfgpTexts.some(t => t.includes('sampled on 2 ranks'))", timeout=30_000)
    texts = page.evaluate("() => window.__cfgpTexts")
    joined = "\n".join(texts)
    assert "starting 2 workers, 0/2 ready" in joined and "2 workers ready in" in joined, texts
    assert "loading the model" in joined, texts
    frontend.screenshot("start_up_progress_done")
    assert not frontend.page_errors, frontend.page_errors
