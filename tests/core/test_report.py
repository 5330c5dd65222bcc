from __future__ import annotations

from ogsd.core.report import HEADER, format_rtt, selection_table


def test_table_has_anyconnect_texts() -> None:
    rows = [("vpn-a.example.com", 23.4, None),
            ("vpn-b.example.com", None, "unreachable: refused")]
    lines = selection_table(rows, "vpn-a.example.com")
    assert lines[0] == HEADER == "*** OGS Selection Results ***"
    assert lines[1].startswith("Server Address")
    assert lines[1].endswith("RTT (ms)")
    assert lines[2].split() == ["vpn-a.example.com", "23"]
    assert lines[3].split() == ["vpn-b.example.com", "unreachable:", "refused"]
    assert lines[-1] == "Selected 'vpn-a.example.com' as the optimal server."


def test_sub_10ms_keeps_a_decimal() -> None:
    assert format_rtt(0.42, None) == "0.4"
    assert format_rtt(None, None) == "unreachable"
    assert selection_table([], None)[-1] == "No server could be selected."
