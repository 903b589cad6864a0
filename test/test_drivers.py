"""Hardware-driver unit conversions and SDK discovery (the SDKs themselves cannot run here)."""

from __future__ import annotations

import numpy as np
import pytest

from ws_ros.drivers import Go1Driver, PiperDriver, SDKMissingError, millideg_to_rad, rad_to_millideg


def test_piper_units_round_trip():
    q = np.array([0.0, 1.0, -2.5, np.pi / 2, -0.3, 3.0])
    md = rad_to_millideg(q)
    assert md.dtype == np.int64 and md[3] == 90000
    np.testing.assert_allclose(millideg_to_rad(md), q, atol=np.radians(0.001) / 2 + 1e-12)


@pytest.mark.parametrize("driver, sdk", [(Go1Driver, "robot_interface"), (PiperDriver, "piper_sdk")])
def test_missing_sdk_is_named(driver, sdk):
    with pytest.raises(SDKMissingError, match=sdk):
        driver()
