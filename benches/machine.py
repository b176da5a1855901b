"""How the reports describe the machine a run measured on (imported by plot.py and the *_report.py
scripts). run.sh measures, before it starts any server, how many cores everything else on the
machine kept busy over one second (`others_busy_cores_start`); a run that started beside other
work says so, one that started on an otherwise idle machine says that instead."""


def was_shared(m):
    if m.get("note"):
        return False
    others = m.get("others_busy_cores_start")
    return others is None or float(others) >= 0.3


def sharing(m):
    """'otherwise idle (…)' or 'shared with other builds (…)'."""
    others, end = m.get("others_busy_cores_start"), m.get("load_average")
    at_end = f"load average {end} at the end" if end is not None else ""
    if m.get("note"):  # said by whoever ran it, e.g. how other work was kept off the machine
        return m["note"] + (f" ({at_end})" if at_end else "")
    if others is None:  # a run stamped before run.sh measured it
        return "shared with other builds" + (f" ({at_end})" if at_end else "")
    words = "shared with other builds" if was_shared(m) else "otherwise idle"
    return f"{words} ({others} cores busy before the servers started{', ' + at_end if at_end else ''})"
