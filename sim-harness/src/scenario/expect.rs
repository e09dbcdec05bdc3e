//! Expectations: `"<metric> <op> <value>"` strings such as `"frames.lost == 0"`,
//! `"b:counters.rx_frames >= a:counters.tx_frames"` or `"status.needs_reset"` (a boolean metric
//! alone means `== true`, `!metric` means `== false`).

use super::metrics::{DeviceShape, Metric, Value, ValueKind};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

impl Op {
    /// As written.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Lt => "<",
        }
    }

    /// Applies the operator; None when the types do not allow it.
    pub fn apply(self, a: Value, b: Value) -> Option<bool> {
        match (a, b) {
            (Value::Int(a), Value::Int(b)) => Some(match self {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Ge => a >= b,
                Op::Le => a <= b,
                Op::Gt => a > b,
                Op::Lt => a < b,
            }),
            (Value::Bool(a), Value::Bool(b)) => match self {
                Op::Eq => Some(a == b),
                Op::Ne => Some(a != b),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A metric read from a device (or scenario-wide when `device` is None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRef {
    /// Index of the device it is read from (None for scenario-wide metrics).
    pub device: Option<usize>,
    pub metric: Metric,
    /// As written (with any `device:` prefix).
    pub text: String,
}

/// The right-hand side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Literal(Value),
    Metric(MetricRef),
}

/// One checked expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// As written.
    pub text: String,
    /// Line in the file.
    pub line: usize,
    pub lhs: MetricRef,
    pub op: Op,
    pub rhs: Operand,
}

/// Names and shapes of the scenario's devices, and the device unprefixed metrics read from.
pub struct Scope<'a> {
    pub devices: &'a [(String, DeviceShape)],
    pub default_device: usize,
}

impl Scope<'_> {
    fn metric(&self, text: &str) -> Result<MetricRef, String> {
        let (device, path) = match text.split_once(':') {
            Some((d, p)) => {
                let i = self
                    .devices
                    .iter()
                    .position(|(n, _)| n == d.trim())
                    .ok_or_else(|| {
                        format!(
                            "unknown device `{}` in `{text}`; devices: {}",
                            d.trim(),
                            self.devices
                                .iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                (i, p.trim())
            }
            None => (self.default_device, text),
        };
        let shape = self
            .devices
            .get(device)
            .map(|(_, s)| *s)
            .ok_or_else(|| "the scenario has no device".to_string())?;
        let metric = Metric::parse(path, shape)?;
        let device = metric.per_device().then_some(device);
        Ok(MetricRef {
            device,
            metric,
            text: text.to_string(),
        })
    }
}

/// Parses an integer literal: decimal or 0x hex, `_` separators allowed.
fn int_literal(s: &str) -> Option<u64> {
    let s = s.replace('_', "");
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses one expectation string.
pub fn parse(text: &str, line: usize, scope: &Scope<'_>) -> Result<Expectation, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty expectation".into());
    }
    const OPS: [(&str, Op); 6] = [
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">=", Op::Ge),
        ("<=", Op::Le),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];
    let found = t.char_indices().find_map(|(i, _)| {
        OPS.iter()
            .find(|(s, _)| t.get(i..).is_some_and(|r| r.starts_with(s)))
            .map(|&(s, op)| (i, s, op))
    });
    let Some((at, sym, op)) = found else {
        // A boolean metric alone (or negated).
        let (neg, name) = match t.strip_prefix('!') {
            Some(n) => (true, n.trim()),
            None => (false, t),
        };
        let lhs = scope.metric(name)?;
        if lhs.metric.kind() != ValueKind::Bool {
            return Err(format!(
                "`{name}` is an integer metric: compare it, e.g. `{name} == 0`"
            ));
        }
        return Ok(Expectation {
            text: t.to_string(),
            line,
            lhs,
            op: Op::Eq,
            rhs: Operand::Literal(Value::Bool(!neg)),
        });
    };
    let left = t.get(..at).unwrap_or_default().trim();
    let right = t.get(at + sym.len()..).unwrap_or_default().trim();
    if left.is_empty() || right.is_empty() {
        return Err(format!("`{t}`: expected `<metric> {sym} <value>`"));
    }
    let lhs = scope.metric(left)?;
    let rhs = match right {
        "true" => Operand::Literal(Value::Bool(true)),
        "false" => Operand::Literal(Value::Bool(false)),
        r if r.starts_with('-') => return Err(format!("`{r}`: metrics are never negative")),
        r if r.starts_with(|c: char| c.is_ascii_digit()) => {
            Operand::Literal(Value::Int(int_literal(r).ok_or_else(|| {
                format!("`{r}` is not an integer (decimal or 0x hex, at most 2^64 - 1)")
            })?))
        }
        r => Operand::Metric(scope.metric(r)?),
    };
    let rkind = match &rhs {
        Operand::Literal(Value::Int(_)) => ValueKind::Int,
        Operand::Literal(Value::Bool(_)) => ValueKind::Bool,
        Operand::Metric(m) => m.metric.kind(),
    };
    let lkind = lhs.metric.kind();
    if lkind != rkind {
        return Err(format!(
            "`{t}` compares {} with {}",
            kind_name(lkind),
            kind_name(rkind)
        ));
    }
    if lkind == ValueKind::Bool && !matches!(op, Op::Eq | Op::Ne) {
        return Err(format!("`{t}`: booleans take == or != only"));
    }
    Ok(Expectation {
        text: t.to_string(),
        line,
        lhs,
        op,
        rhs,
    })
}

fn kind_name(k: ValueKind) -> &'static str {
    match k {
        ValueKind::Int => "an integer",
        ValueKind::Bool => "a boolean",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Vec<(String, DeviceShape)> {
        vec![
            (
                "a".into(),
                DeviceShape {
                    pairs: 1,
                    served: false,
                },
            ),
            (
                "b".into(),
                DeviceShape {
                    pairs: 4,
                    served: false,
                },
            ),
        ]
    }

    #[test]
    fn parses_forms() {
        let d = scope();
        let s = Scope {
            devices: &d,
            default_device: 0,
        };
        let e = parse("frames.lost == 0", 3, &s).unwrap();
        assert_eq!(
            (e.op, e.rhs.clone(), e.lhs.device),
            (Op::Eq, Operand::Literal(Value::Int(0)), None)
        );
        let e = parse("b:counters.rx_frames>=a:counters.tx_frames", 1, &s).unwrap();
        assert_eq!(e.lhs.device, Some(1));
        assert!(matches!(
            e.rhs,
            Operand::Metric(MetricRef {
                device: Some(0),
                ..
            })
        ));
        let e = parse("!status.needs_reset", 1, &s).unwrap();
        assert_eq!(e.rhs, Operand::Literal(Value::Bool(false)));
        assert_eq!(
            parse("b:tx.3.frames > 0x10", 1, &s).unwrap().rhs,
            Operand::Literal(Value::Int(16))
        );
        assert!(
            parse("tx.3.frames > 1", 1, &s).is_err(),
            "device a has one pair"
        );
        assert!(parse("status.needs_reset > 1", 1, &s).is_err());
        assert!(parse("status.needs_reset >= true", 1, &s).is_err());
        assert!(parse("counters.tx_frames", 1, &s).is_err());
        assert!(parse("counters.tx_frames == -1", 1, &s).is_err());
        assert!(parse("c:counters.tx_frames == 1", 1, &s)
            .unwrap_err()
            .contains("unknown device `c`"));
        assert!(parse("== 1", 1, &s).is_err());
        assert_eq!(Op::Lt.apply(Value::Int(1), Value::Int(2)), Some(true));
        assert_eq!(Op::Gt.apply(Value::Bool(true), Value::Bool(false)), None);
    }
}
