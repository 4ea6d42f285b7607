//! Python values to Rust ones and back: seconds as floats, names as `str`,
//! JSON payloads through Python's `json` module. Wrong types raise
//! `InvalidInput` naming the argument, like the crate's own checks.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};

use crate::errors::invalid;

/// A `str` argument.
pub(crate) fn string(field: &str, v: &Bound<'_, PyAny>) -> PyResult<String> {
    if v.is_instance_of::<PyString>() {
        return v
            .extract::<String>()
            .map_err(|_| invalid(field, "must be valid UTF-8 (no lone surrogates)"));
    }
    Err(invalid(
        field,
        format!("must be a str, got {}", type_name(v)),
    ))
}

/// A number of seconds (`int` or `float`, not `bool`), above zero and finite.
pub(crate) fn seconds(field: &str, v: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let secs = if v.is_instance_of::<PyBool>() {
        return Err(invalid(field, "must be a number of seconds, got bool"));
    } else if v.is_instance_of::<PyInt>() || v.is_instance_of::<PyFloat>() {
        v.extract::<f64>()?
    } else {
        return Err(invalid(
            field,
            format!("must be a number of seconds, got {}", type_name(v)),
        ));
    };
    if !secs.is_finite() {
        return Err(invalid(
            field,
            format!("must be a finite number of seconds, got {secs}"),
        ));
    }
    if secs <= 0.0 {
        return Err(invalid(field, format!("must be above zero, got {secs}")));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| invalid(field, format!("is out of range: {secs}")))
}

/// An optional number of seconds: `None` stays `None`.
pub(crate) fn opt_seconds(field: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => seconds(field, v).map(Some),
    }
}

/// An optional lock-delay: `None` stays `None`; zero (off) and positive
/// seconds are accepted, the crate checks the upper bound.
pub(crate) fn opt_delay(field: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    let v = match v {
        Some(v) if !v.is_none() => v,
        _ => return Ok(None),
    };
    if (v.is_instance_of::<PyInt>() || v.is_instance_of::<PyFloat>())
        && !v.is_instance_of::<PyBool>()
    {
        let secs: f64 = v.extract()?;
        if secs == 0.0 {
            return Ok(Some(Duration::ZERO));
        }
        if secs < 0.0 {
            return Err(invalid(
                field,
                format!("must be zero (off) or above, got {secs}"),
            ));
        }
    }
    seconds(field, v).map(Some)
}

/// An optional `str` argument: `None` stays `None`.
pub(crate) fn opt_string(field: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    match v {
        Some(v) if !v.is_none() => string(field, v).map(Some),
        _ => Ok(None),
    }
}

/// A whole number in `u32` range (`int`, not `bool`).
pub(crate) fn count(field: &str, v: &Bound<'_, PyAny>) -> PyResult<u32> {
    if v.is_instance_of::<PyBool>() || !v.is_instance_of::<PyInt>() {
        return Err(invalid(
            field,
            format!("must be an int, got {}", type_name(v)),
        ));
    }
    let n: i64 = v.extract().map_err(|_| invalid(field, "is out of range"))?;
    u32::try_from(n).map_err(|_| {
        invalid(
            field,
            format!("must be between 0 and {}, got {n}", u32::MAX),
        )
    })
}

/// A JSON-serializable Python value as JSON.
pub(crate) fn to_json(field: &str, v: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let py = v.py();
    let text: String = py
        .import("json")?
        .call_method1("dumps", (v,))
        .map_err(|e| invalid(field, format!("must be JSON-serializable: {e}")))?
        .extract()?;
    serde_json::from_str(&text).map_err(|e| invalid(field, format!("is not valid JSON: {e}")))
}

/// A JSON value as a Python value.
pub(crate) fn from_json(py: Python<'_>, v: Option<&serde_json::Value>) -> PyResult<Py<PyAny>> {
    match v {
        None => Ok(py.None()),
        Some(v) => Ok(py
            .import("json")?
            .call_method1("loads", (v.to_string(),))?
            .unbind()),
    }
}

/// A UTC timestamp as an aware `datetime.datetime`.
pub(crate) fn datetime(py: Python<'_>, t: chrono::DateTime<chrono::Utc>) -> PyResult<Py<PyAny>> {
    let dt = py.import("datetime")?;
    let utc = dt.getattr("timezone")?.getattr("utc")?;
    let secs = t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6;
    Ok(dt
        .getattr("datetime")?
        .call_method1("fromtimestamp", (secs, utc))?
        .unbind())
}

/// An optional timestamp as `datetime` or `None`.
pub(crate) fn opt_datetime(
    py: Python<'_>,
    t: Option<chrono::DateTime<chrono::Utc>>,
) -> PyResult<Py<PyAny>> {
    t.map_or_else(|| Ok(py.None()), |t| datetime(py, t))
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}
