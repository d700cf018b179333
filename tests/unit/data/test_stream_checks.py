"""The byte offset a bad-UTF-8 message names (data/streaming.py `first_invalid_utf8`), across the 1 MB pieces the
file is read in, and the one-line read problems built from it."""

from gptresume.data.streaming import first_invalid_utf8, read_problem


def test_first_invalid_byte_offset_and_line(tmp_path):
    path = tmp_path / "a.txt"
    head = ("x" * 99 + "\n") * 10_486 + "é" * 3  # past the first 1 MB piece, a two-byte character on its edge
    path.write_bytes(head.encode() + b"ok\xff more\n")
    assert first_invalid_utf8(path) == (len(head.encode()) + 2, 10_487)
    path.write_bytes(("y" * ((1 << 20) - 1) + "é" + "z").encode())  # é split across the boundary: valid
    assert first_invalid_utf8(path) is None
    path.write_bytes(b"abc\xe2\x82")  # a character cut short at the end of the file
    assert first_invalid_utf8(path) == (3, 1)
    path.write_bytes(b"")
    assert first_invalid_utf8(path) is None


def test_read_problems_name_the_file_and_where(tmp_path):
    path = tmp_path / "b.txt"
    path.write_bytes(b"line one\nline two \xc3\x28\n")
    try:
        path.read_bytes().decode()
    except UnicodeDecodeError as e:
        message = read_problem(str(path), e, 0)
    assert message.startswith(f"data.source: {path} is not valid UTF-8 at byte 18 (line 2)")
    assert read_problem("x.jsonl", ValueError("JSON parse error"), 4) == (
        "data.source: x.jsonl: could not read document 5: ValueError: JSON parse error")
