"""Workers import the driver's own modules: from the script's folder, from the current directory
of a ``python -c`` or REPL driver, and from anywhere on the driver's sys.path."""

import subprocess
import sys
import textwrap


def run_driver(cwd, *args):
    out = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_module_in_current_directory_of_a_dash_c_driver(tmp_path):
    (tmp_path / "cwd_module.py").write_text("def triple(x):\n    return 3 * x\n")
    code = textwrap.dedent(
        """
        import volley, cwd_module
        f = volley.remote(cwd_module.triple)  # pickled by reference: workers must import it
        print(volley.get(f.remote(14)))
        volley.shutdown()
        """
    )
    assert run_driver(tmp_path, "-c", code).strip() == "42"


def test_module_beside_a_script_driver_and_on_an_added_path(tmp_path):
    app = tmp_path / "app"
    lib = tmp_path / "lib"
    app.mkdir()
    lib.mkdir()
    (app / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (lib / "extra.py").write_text("def inc(x):\n    return x + 1\n")
    (app / "main.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.append({str(lib)!r})
            import volley, helpers, extra
            d, i = volley.remote(helpers.double), volley.remote(extra.inc)
            print(volley.get(i.remote(d.remote(20))))
            volley.shutdown()
            """
        )
    )
    # Run from elsewhere: the script's folder, not the cwd, is what makes `helpers` importable.
    assert run_driver(tmp_path, str(app / "main.py")).strip() == "41"
