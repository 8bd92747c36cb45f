"""License names: normalise what packages and users write to SPDX-like ids, match the recipe's
allow-list, and name the terms (share-alike, non-commercial) a data card must carry forward."""

from __future__ import annotations

import fnmatch
import re

# Trove classifiers and free-text spellings -> SPDX ids.
_CLASSIFIERS = {
    "MIT License": "MIT",
    "BSD License": "BSD-3-Clause",
    "Apache Software License": "Apache-2.0",
    "Python Software Foundation License": "PSF-2.0",
    "ISC License (ISCL)": "ISC",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "The Unlicense (Unlicense)": "Unlicense",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0",
    "GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0",
    "GNU General Public License v2 (GPLv2)": "GPL-2.0",
    "Historical Permission Notice and Disclaimer (HPND)": "HPND",
    "zlib/libpng License": "Zlib",
    "Public Domain": "public-domain",
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
}
_ALIASES = {
    "mit": "MIT",
    "mit license": "MIT",
    "bsd": "BSD-3-Clause",
    "bsd license": "BSD-3-Clause",
    "new bsd": "BSD-3-Clause",
    "bsd-3": "BSD-3-Clause",
    "3-clause bsd": "BSD-3-Clause",
    "apache 2.0": "Apache-2.0",
    "apache-2": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0",
    "psf": "PSF-2.0",
    "psfl": "PSF-2.0",
    "python software foundation license": "PSF-2.0",
    "public domain": "public-domain",
    "cc0": "CC0-1.0",
    "cc-by": "CC-BY-4.0",
    "cc by": "CC-BY-4.0",
    "cc-by-sa": "CC-BY-SA-4.0",
    "cc by-sa 3.0": "CC-BY-SA-3.0",
    "cc by-sa 4.0": "CC-BY-SA-4.0",
    "cc-by-sa 3.0": "CC-BY-SA-3.0",
    "cc-by-sa 4.0": "CC-BY-SA-4.0",
    "cc by 4.0": "CC-BY-4.0",
    "": "unknown",
}


def normalize_license(text: str | None) -> str:
    """A short SPDX-like id for a license string; long license texts and blanks become 'unknown'."""
    if text is None:
        return "unknown"
    t = " ".join(str(text).split())
    if t in _CLASSIFIERS:
        return _CLASSIFIERS[t]
    low = t.lower()
    if low in _ALIASES:
        return _ALIASES[low]
    # A full license text pasted into the License field says nothing short; look for a known title.
    if len(t) > 60:
        for key, spdx in (
            ("mit license", "MIT"),
            ("apache license", "Apache-2.0"),
            ("redistribution and use in source and binary forms", "BSD-3-Clause"),
            ("permission is hereby granted, free of charge", "MIT"),
        ):
            if key in low:
                return spdx
        return "unknown"
    return t


def package_license(metadata) -> str:
    """License of an installed distribution from its metadata: License-Expression, License, classifiers."""
    expr = metadata.get("License-Expression")
    if expr:  # already SPDX (PEP 639); long compound expressions must not hit the full-text heuristic
        return " ".join(expr.split())
    lic = normalize_license(metadata.get("License"))
    if lic != "unknown":
        return lic
    for c in metadata.get_all("Classifier") or []:
        if c.startswith("License ::"):
            name = c.split("::")[-1].strip()
            if name in _CLASSIFIERS:
                return _CLASSIFIERS[name]
    return "unknown"


def allowed(license: str, allow: list[str]) -> bool:
    """True if an SPDX expression is allowed ('A OR B' needs one part allowed, 'A AND B' needs both)."""

    def one(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name.lower(), pat.lower()) for pat in allow)

    expr = license.strip("() ")
    if " OR " in expr:
        return any(allowed(p, allow) for p in expr.split(" OR "))
    if " AND " in expr:
        return all(allowed(p, allow) for p in expr.split(" AND "))
    return one(expr)


def license_terms(license: str) -> dict[str, bool]:
    """Terms a derived dataset or model must carry: share-alike (incl. copyleft) and non-commercial."""
    up = license.upper()
    return {
        "share_alike": bool(re.search(r"(^|[-\s])SA([-\s]|$)", up)) or bool(re.search(r"\b(A|L)?GPL", up)),
        "non_commercial": bool(re.search(r"(^|[-\s])NC([-\s]|$)", up)),
        "attribution": up.startswith("CC-BY") or up.startswith("CC BY"),
    }
