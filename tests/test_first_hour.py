"""Small things a new user trips over: `-o x.jpg` for several inputs, an empty file, the page's colours."""

import re

import pytest
from PIL import Image

from conftest import REPO, invoke_cli
from petseg_cli.data.images import DecodeError, decode_rgb, read_rgb
from synthetic import photo


def test_an_image_suffix_for_several_inputs_is_an_error_not_a_directory(tiny_run, tmp_path):
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(photo(40, 32)).save(tmp_path / name)
    for output in ("x.jpg", "x.PNG", "out.webp"):
        result = invoke_cli("infer", "a.jpg", "b.jpg", "-o", output, "--run", str(tiny_run), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"-o {output} names one file but 2 images were given; pass a directory" in result.stderr
        assert not (tmp_path / output).exists()


def test_an_empty_file_is_reported_as_empty(tiny_run, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.fromarray(photo(40, 32)).save(tmp_path / "good.jpg")
    result = invoke_cli("infer", "empty.jpg", "good.jpg", "--run", str(tiny_run), cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "empty.jpg: empty file" in errors[0]
    assert (tmp_path / "masks" / "good.png").is_file()


def test_empty_and_non_image_content_are_told_apart(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not a picture\n")
    with pytest.raises(DecodeError, match="empty.png: empty file$"):
        read_rgb(tmp_path / "empty.png")
    with pytest.raises(DecodeError, match="text.png: not an image file$"):
        read_rgb(tmp_path / "text.png")
    with pytest.raises(DecodeError, match="upload: empty file$"):
        decode_rgb(b"", "upload")


def css_colour(page: str, selector: str) -> str:
    rule = re.search(rf"^\s*{re.escape(selector)}\s*{{([^}}]*)}}", page, re.MULTILINE)
    assert rule, selector
    return re.search(r"(?:^|;)\s*color:\s*([^;]+);", rule.group(1)).group(1).strip().lower()


def test_the_page_prints_the_pet_share_in_a_neutral_colour_not_its_error_red():
    page = (REPO / "petseg_cli" / "serve" / "page.html").read_text(encoding="utf-8")
    assert css_colour(page, ".share") != css_colour(page, ".error")
    assert css_colour(page, ".share") == css_colour(page, ":root")  # the page's text colour
