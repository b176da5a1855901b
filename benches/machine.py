"""How the reports describe the machine a run measured on (imported by plot.py and the *_report.py
scripts). run.sh stamps the load average before it starts any server (`load_average_start`, the
load of everything else on the machine) and at the end; a run that started on a busy machine says
so, one that started on an idle machine says that instead."""


def sharing(m):
    """'quiet (…)' or 'shared with other builds (…)', from the load before the run started."""
    start, end = m.get("load_average_start"), m.get("load_average")
    at_end = f", {end} at the end" if end is not None else ""
    if start is None:  # a run stamped before run.sh recorded it
        return f"shared with other builds (load average{' ' + str(end) if end is not None else ''} at the end)"
    busy = float(start) >= 0.7
    return (f"{'shared with other builds' if busy else 'otherwise idle'}"
            f" (load average {start} before the servers started{at_end})")


def was_shared(m):
    start = m.get("load_average_start")
    return start is None or float(start) >= 0.7
