"""Data Docs that open offline.

Great Expectations' pages load Bootstrap, bootstrap-table, jQuery, Popper and Font Awesome from
CDNs, and the index page's lists of suites and results are drawn by bootstrap-table: on the
bureau's private network (or any machine without the internet) the index shows nothing. The same
files are resolved once from the npm registry (``npm pack``, like Delta's jars from Maven) into
the cache, copied into the site's ``static/vendor/`` and the pages pointed at them. Tags for
anything else external (charts' Vega, a dark theme, GE's logo) are removed, and so are the
copies' integrity and cross-origin attributes, which a browser refuses for file:// pages.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGES = {  # folder under vendor/ -> npm package
    "bootstrap": "bootstrap@4.3.1",
    "bootstrap-table": "bootstrap-table@1.19.1",
    "jquery": "jquery@3.7.1",
    "popper.js": "popper.js@1.12.9",
    "bootstrap-datepicker": "bootstrap-datepicker@1.9.0",
    "fontawesome-free": "@fortawesome/fontawesome-free@6.6.0",
}
_FILTER = "dist/extensions/filter-control/bootstrap-table-filter-control.min"
ASSETS = {  # the CDN address GE writes -> (vendor folder, file in the package)
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css":
        ("bootstrap", "dist/css/bootstrap.min.css"),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js":
        ("bootstrap", "dist/js/bootstrap.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        ("bootstrap-table", "dist/bootstrap-table.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        ("bootstrap-table", "dist/bootstrap-table.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.js": ("bootstrap-table", f"{_FILTER}.js"),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.css": ("bootstrap-table", f"{_FILTER}.css"),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.css": ("bootstrap-table", f"{_FILTER}.css"),
    "https://code.jquery.com/jquery-3.7.1.min.js": ("jquery", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js":
        ("popper.js", "dist/umd/popper.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
    "bootstrap-datepicker.min.js": ("bootstrap-datepicker", "dist/js/bootstrap-datepicker.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
    "bootstrap-datepicker.min.css":
        ("bootstrap-datepicker", "dist/css/bootstrap-datepicker.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        ("fontawesome-free", "css/all.min.css"),
}
EXTRA = {"fontawesome-free": ["webfonts"]}  # what a copied file refers to relatively
_TAG = re.compile(r'<script[^>]*\ssrc="(https?://[^"]*)"[^>]*>\s*</script>'
                  r'|<link[^>]*\shref="(https?://[^"]*)"[^>]*>'
                  r'|<img[^>]*\ssrc="(https?://[^"]*)"[^>]*>')

_CHECKS = re.compile(r'\s(integrity|crossorigin)(="[^"]*")?')


def resolve(cache_root: Path) -> Path | None:
    """The npm packages unpacked under ``<cache>/data-docs-assets`` (fetched once); None when
    they cannot be had (no npm, no registry): the pages then go without them."""
    root = cache_root / "data-docs-assets"
    for folder, spec in PACKAGES.items():
        target = root / folder
        if (target / ".resolved").exists():
            continue
        npm = shutil.which("npm")
        if npm is None:
            log.warning("npm not found: Data Docs will have no styles or tables offline")
            return None
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "pack", "--silent", spec, "--pack-destination", str(target)],
                              capture_output=True, text=True, timeout=300)
        tgz = sorted(target.glob("*.tgz"))
        if done.returncode != 0 or not tgz:
            log.warning("npm pack %s failed (%s): Data Docs go without it", spec,
                        done.stderr.strip()[-200:])
            return None
        with tarfile.open(tgz[0]) as tar:
            tar.extractall(target, filter="data")
        tgz[0].unlink()
        (target / ".resolved").touch()
    return root


def make_offline(site: Path, cache_root: Path) -> int:
    """Point every page of the site at local copies of its CDN files and drop other external
    tags. Returns how many pages changed."""
    assets = resolve(cache_root)
    vendor = site / "static" / "vendor"
    if assets is not None:
        for folder, path in set(ASSETS.values()):
            _copy(assets / folder / "package" / path, vendor / folder / path)
        for folder, dirs in EXTRA.items():
            for d in dirs:
                shutil.copytree(assets / folder / "package" / d, vendor / folder / d,
                                dirs_exist_ok=True)
    changed = 0
    for page in site.rglob("*.html"):
        up = "../" * (len(page.relative_to(site).parts) - 1)

        def local(match: re.Match, up: str = up) -> str:
            url = next(g for g in match.groups() if g)
            if assets is None or url not in ASSETS:
                return ""
            folder, path = ASSETS[url]
            tag = _CHECKS.sub("", match.group(0))
            return tag.replace(url, f"{up}static/vendor/{folder}/{path}")

        text = page.read_text(encoding="utf-8")
        offline = _TAG.sub(local, text)
        if offline != text:
            page.write_text(offline, encoding="utf-8")
            changed += 1
    return changed


def _copy(source: Path, target: Path) -> None:
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
