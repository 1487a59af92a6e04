"""axe-core (vendored, web/static/vendor/axe-core) run inside a Playwright page.

``check(page, what)`` runs every axe rule on the page as it is now, in the light
and the dark colour scheme, and fails on any violation, naming the rule and the
first elements it found.
"""
from __future__ import annotations

from tests.support import ROOT

AXE = ROOT / "web" / "static" / "vendor" / "axe-core" / "axe.min.js"

RUN = """
async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ': ' + (n.failureSummary || '')),
  }));
}
"""


def check(page, what: str) -> None:
    """No axe violation on ``page`` in either colour scheme."""
    problems = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        if not page.evaluate("typeof window.axe !== 'undefined'"):
            page.add_script_tag(path=str(AXE))
        for v in page.evaluate(RUN):
            problems.append(f"[{scheme}] {v['id']} ({v['impact']}): {v['help']}\n    " + "\n    ".join(v["nodes"]))
    page.emulate_media(color_scheme="light")
    assert not problems, f"accessibility violations on {what}:\n" + "\n".join(problems)
