"""What every page shares that is not the store: the login gate, the reviewer's name, an id
picked from the URL's query string, run labels and statuses as shown, the workspace caption."""
from __future__ import annotations

import streamlit as st

from dashboard import store
from engine.processes import owner_alive

ACTIVE = ("queued", "running")


def owner_gone(run: store.Run) -> bool:
    """A queued-and-launched or running run whose process is gone (read-only check)."""
    return run.status in ACTIVE and bool(run.pid) and not owner_alive(run)


def status_text(run: store.Run) -> str:
    """The run's status as shown: a run whose owner died says so until it is marked failed."""
    return f"{run.status} (owner gone: it will be marked failed)" if owner_gone(run) else run.status


def resumable(all_runs: dict[int, store.Run]) -> list[int]:
    """Runs that died (failed, cancelled, or owner gone while running) with a last checkpoint."""
    return [r.id for r in all_runs.values()
            if (r.status in ("failed", "cancelled") or (r.status == "running" and owner_gone(r)))
            and (store.run_dir(r.id) / "last.pt").is_file()]


def url_index(ids: list[int], key: str) -> int:
    """The position in `ids` of the id the URL names (?key=N), else 0: links and reloads keep a choice."""
    wanted = st.query_params.get(key)
    return ids.index(int(wanted)) if wanted and wanted.isdigit() and int(wanted) in ids else 0


def run_label(run, names: dict[int, str]) -> str:
    cfg = run.config
    return f"#{run.id} {names.get(run.dataset_id, '?')} · {status_text(run)} · {cfg.get('img_size')} px"


def pick_run(runs: dict, *, key: str = "run", only_with_checkpoint: bool = True):
    """A run selector whose choice lives in the URL (?run=N), so links and reloads keep it."""
    names = store.dataset_names()
    usable = [r for r in runs.values() if r.checkpoint or not only_with_checkpoint]
    if not usable:
        st.info("No trained run yet. Start one on the Train page or with `aivh train`.")
        return None
    ids = [r.id for r in reversed(usable)]
    chosen = st.selectbox("Run", ids, index=url_index(ids, key), format_func=lambda i: run_label(runs[i], names),
                          key=key)
    st.query_params[key] = str(chosen)
    return runs[chosen]


def auth_configured() -> bool:
    """True when secrets.toml has an [auth] section: the dashboard is shared and needs a login."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all (Streamlit raises its own types)
        return False


def logged_in_name() -> str | None:
    """The name (else e-mail) of the user logged in through st.login, when login is configured."""
    if not auth_configured() or not st.user.get("is_logged_in"):
        return None
    return str(st.user.get("name") or st.user.get("email") or "").strip() or None


def login_gate() -> None:
    """With login configured, nothing but a login button until the user has logged in (OIDC)."""
    if not auth_configured():
        return
    if not st.user.get("is_logged_in"):
        st.title("aivh")
        st.write("This review lab is shared: log in to review and relabel.")
        if st.button("Log in", type="primary"):
            st.login()
        st.stop()
    st.sidebar.caption(f"Logged in as {logged_in_name()}")
    if st.sidebar.button("Log out"):
        st.logout()


def reviewer() -> str:
    """The logged-in user's name when login is configured; otherwise asked once in the sidebar
    and remembered in the URL (?reviewer=...)."""
    if auth_configured():
        name = logged_in_name() or ""
        st.sidebar.text_input("Reviewer", value=name, disabled=True, key="reviewer_name")
        return name
    name = st.sidebar.text_input("Reviewer", value=st.query_params.get("reviewer", ""),
                                 placeholder="your name", key="reviewer_name")
    if name:
        st.query_params["reviewer"] = name
    return name.strip()


def workspace_caption() -> None:
    st.caption(f"store: {store.home()}")


def show_image(root: str, rel_path: str, known: tuple | None, size: int, caption: str | None = None) -> None:
    """An image's cached thumbnail (known: its sha1 and stamp from store.image_sha1s), or why not."""
    from engine.thumbs import thumbnail

    sha1, stamp = known or (None, None)
    try:
        st.image(str(thumbnail(store.home() / "cache", root, rel_path, sha1, size, stamp)), caption=caption)
    except (FileNotFoundError, PermissionError, OSError) as e:
        st.warning(f"{rel_path}: cannot show the image ({e})")


SELECTION = "review_selection"  # session state: the images a page opened in Review


def open_in_review(image_ids, title: str, *, run_id: int | None = None) -> None:
    """Open exactly these images in Review, in the order given (a chart's bar, a lasso, a
    cluster, "more like this"), under `title`; `run_id` picks the run whose predictions they
    show (else Review's current one). Kept in the session until Review's "Back to all
    predictions", or a link that names its own filters, clears it."""
    ids = [int(i) for i in dict.fromkeys(int(i) for i in image_ids)]
    st.session_state[SELECTION] = {"ids": ids, "title": title, "run": run_id}
    st.session_state.pop("selected_image", None)
    params = {k: v for k, v in st.query_params.to_dict().items() if k == "reviewer"}
    params["queue"] = "run"
    if run_id is not None:
        params["run"] = str(run_id)
    st.switch_page("views/review.py", query_params=params)


def review_selection(run_id: int) -> dict | None:
    """What open_in_review asked Review to show ({"ids", "title", "run"}) for this run (or for
    whichever run Review shows, when it named none), if anything."""
    sel = st.session_state.get(SELECTION)
    return sel if sel and sel.get("run") in (None, run_id) else None


def clear_review_selection() -> None:
    st.session_state.pop(SELECTION, None)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st, 32nd."""
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def epoch_axis(fig, last: int | None = None) -> None:
    """Whole-number ticks on an x axis of epochs (plotly's own ticks fall on 0.5 for a short
    run): every epoch up to 10, then every ceil(last / 10)th; last: the figure's largest x when
    not given."""
    import math
    from numbers import Real

    if last is None:
        xs = [x for trace in fig.data for x in (trace.x if trace.x is not None else ())
              if isinstance(x, Real)]
        last = int(max(xs, default=1))
    fig.update_xaxes(tick0=0, dtick=max(1, math.ceil(max(int(last), 1) / 10)), tickformat="d")
