"""The CSV reader's own helpers (whole files are read in test_silver and test_corpus)."""

import pytest

from medallion.csv_reader import odd_quotes


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"a,b\n",
        b'1,"Ana, Luis",3\n2,"x ""y""",4\n',  # quoted separators and doubled quotes: even
        b'1,"Ana\n',  # a quoted field that goes on to the next line
        b'1,"Ana\nDiaz",2\n',
        b'x\n"',  # the last line, without its line end
        b'"a"\n"b""c"\n',
        b'a\n"\n"\n',
        b'\xc3\xa9,"\xe2\x82\xac"\r\nb,"\r\n',  # UTF-8 text and CRLF line ends
    ],
)
def test_odd_quotes_is_any_line_with_an_odd_count(data):
    by_line = any(line.count(b'"') % 2 for line in data.split(b"\n"))
    assert odd_quotes(data) == by_line
