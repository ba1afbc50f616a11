"""Independent validation of the DICOM objects the node writes (dicom3tools' dciodvfy)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .tools import require_tool


def dciodvfy_errors(path: Path | str) -> list[str]:
    """Run ``dciodvfy -new`` on one file; its Error and Abort lines (warnings are allowed).

    dciodvfy exits 0 only when it read the file and found no error: a file it cannot open or read prints
    ``Abort - File open for read failed`` (no Error line) and exits 1, so a non-zero exit without an Error or Abort
    line is reported too, with its output.
    """
    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    problems = [line for line in out.splitlines() if line.startswith(("Error", "Abort"))]
    if proc.returncode != 0 and not problems:
        problems.append(f"dciodvfy exited with {proc.returncode}:\n{out[-2000:]}")
    return problems


def assert_valid_dicom(path: Path | str) -> None:
    """Fail with dciodvfy's own Error/Abort lines when the object is not valid or cannot be read."""
    errors = dciodvfy_errors(path)
    assert not errors, f"dciodvfy found errors in {path}:\n" + "\n".join(errors)


PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
#: Java 17's XPath limits stop PixelMed's validator on real templates (see NOTES): lift them.
PIXELMED_JAVA = ["-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]

#: "Content Item not in template" warnings PixelMed may report, as (path fragment, why it is accepted).
#: PixelMed's TID 1410 (2022) has no free-text row; OHIF 3.13.2 takes a measurement's label only from TEXT
#: "Comment" (DCM 121106) or its private CST4 code, so each box group's Comment is the one deliberate exception.
ACCEPTED_NOT_IN_TEMPLATE = ('/CONTAINER (125007,DCM,"Measurement Group")/TEXT (121106,DCM,"Comment")',)


def pixelmed_sr_report(path: Path | str) -> tuple[list[str], list[str]]:
    """PixelMed's DicomSRValidator on one SR: (Error lines, "not in template" Warning lines)."""
    java = require_tool("java")
    if not PIXELMED_JAR.exists():
        import pytest

        pytest.fail(f"{PIXELMED_JAR} is missing: run scripts/setup.sh (it installs pixelmed-apps)", pytrace=False)
    proc = subprocess.run([java, *PIXELMED_JAVA, "-cp", str(PIXELMED_JAR), "com.pixelmed.validate.DicomSRValidator",
                           "-checktemplateid", str(path)], capture_output=True, text=True, timeout=300)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert "Found Root Template TID_1500 (MeasurementReport)" in lines, "PixelMed did not find TID 1500:\n" + \
        "\n".join(lines[-20:])
    errors = [line for line in lines if line.startswith("Error")]
    not_in_template = [line for line in lines if "not in template" in line]
    return errors, not_in_template


def assert_valid_sr_template(path: Path | str) -> None:
    """PixelMed: no Error, and no content item outside TID 1500 but the accepted Comment of a box group."""
    errors, outside = pixelmed_sr_report(path)
    outside = [line for line in outside if not any(frag in line for frag in ACCEPTED_NOT_IN_TEMPLATE)]
    assert not errors and not outside, f"PixelMed on {path}:\n" + "\n".join(errors + outside)
