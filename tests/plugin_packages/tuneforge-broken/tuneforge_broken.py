"""Test fixture: importing this plugin fails, as a plugin with a missing dependency would."""

import a_module_that_does_not_exist_xyz  # noqa: F401

from tuneforge import MethodSpec, hookimpl


@hookimpl
def tuneforge_methods():
    return [MethodSpec(name="broken", description="never registered")]
