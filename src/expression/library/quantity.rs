//! Kubernetes quantity library: `quantity()`, `isQuantity()` and the quantity methods, with the
//! semantics of `k8s.io/apimachinery/pkg/api/resource.Quantity`.
//!
//! A quantity is held as the API machinery holds it: either the fast `int64Amount` (an `i64`
//! times a power of ten) or an arbitrary-precision decimal, and which one decides `isInteger()`
//! exactly as on the API server (`quantity('1.5Gi').isInteger()` is false there, although the
//! value is whole, because parsing it leaves the fast form). Arithmetic is exact; the decimal
//! form is an `i128` mantissa here, so a value needing more than 38 significant digits is an
//! evaluation error instead of the API server's unbounded decimal.

use std::cmp::Ordering;

use cel::common::types::{CelBool, CelDouble, CelInt, CelString};
use cel::{DeclarationError, Env, ExecutionError};

use super::{error, opaque_val};

pub fn register(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_overload!(env, fn quantity: (CelString) -> Result<Quantity>)?;
    cel::add_overload!(env, fn is_quantity: (CelString) -> CelBool)?;
    // Kubernetes declares `sign` as a global function: its API server rejects `q.sign()` (the
    // form its documentation shows) with "found no matching overload".
    cel::add_overload!(env, fn sign: (Quantity) -> CelInt)?;
    cel::add_member_overload!(env, fn is_integer: (Quantity) -> CelBool)?;
    cel::add_member_overload!(env, fn as_integer: (Quantity) -> Result<CelInt>)?;
    cel::add_member_overload!(env, fn as_approximate_float: (Quantity) -> CelDouble)?;
    cel::add_member_overload!(env, fn is_greater_than: (Quantity, Quantity) -> CelBool)?;
    cel::add_member_overload!(env, fn is_less_than: (Quantity, Quantity) -> CelBool)?;
    cel::add_member_overload!(env, fn compare_to: (Quantity, Quantity) -> CelInt)?;
    cel::add_member_overload!(env, fn add: (Quantity, Quantity) -> Result<Quantity>)?;
    cel::add_member_overload!(env, fn add_int: (Quantity, CelInt) -> Result<Quantity>, name = "add")?;
    cel::add_member_overload!(env, fn sub: (Quantity, Quantity) -> Result<Quantity>)?;
    cel::add_member_overload!(env, fn sub_int: (Quantity, CelInt) -> Result<Quantity>, name = "sub")?;
    Ok(())
}

/// A resource quantity (`100m`, `1.5Gi`, `2e3`).
#[derive(Debug, Clone, Copy)]
pub struct Quantity(Amount);

opaque_val!(Quantity, "kubernetes.Quantity");

impl PartialEq for Quantity {
    fn eq(&self, other: &Quantity) -> bool {
        self.0.decimal().cmp(&other.0.decimal()) == Ordering::Equal
    }
}

/// How the API machinery holds a quantity.
#[derive(Debug, Clone, Copy)]
enum Amount {
    /// `int64Amount`: `value × 10^scale`.
    Int { value: i64, scale: i32 },
    /// `inf.Dec`.
    Dec(Decimal),
}

/// `mantissa × 10^exponent`, exactly.
#[derive(Debug, Clone, Copy)]
struct Decimal {
    mantissa: i128,
    exponent: i32,
}

/// Why a decimal operation has no result.
const TOO_LARGE: &str =
    "the value needs more than 38 significant digits, which driftless does not support";

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

impl Decimal {
    fn sign(self) -> i64 {
        self.mantissa.signum() as i64
    }

    /// Both values at the smaller exponent, if the mantissas fit.
    fn aligned(self, other: Decimal) -> Option<(i128, i128, i32)> {
        let exponent = self.exponent.min(other.exponent);
        let scale = |d: Decimal| {
            let shift = u32::try_from(i64::from(d.exponent) - i64::from(exponent)).ok()?;
            if d.mantissa == 0 {
                return Some(0);
            }
            d.mantissa.checked_mul(pow10(shift)?)
        };
        Some((scale(self)?, scale(other)?, exponent))
    }

    fn checked_add(self, other: Decimal) -> Option<Decimal> {
        let (a, b, exponent) = self.aligned(other)?;
        Some(Decimal {
            mantissa: a.checked_add(b)?,
            exponent,
        })
    }

    fn checked_neg(self) -> Option<Decimal> {
        Some(Decimal {
            mantissa: self.mantissa.checked_neg()?,
            exponent: self.exponent,
        })
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        let by_sign = self.sign().cmp(&other.sign());
        if by_sign != Ordering::Equal || self.mantissa == 0 {
            return by_sign;
        }
        match self.aligned(*other) {
            Some((a, b, _)) => a.cmp(&b),
            // Only the operand with the larger exponent can overflow when scaled: its magnitude
            // exceeds every i128, so it is the farther from zero.
            None => {
                let larger_magnitude = if self.exponent > other.exponent {
                    Ordering::Greater
                } else {
                    Ordering::Less
                };
                if self.mantissa > 0 {
                    larger_magnitude
                } else {
                    larger_magnitude.reverse()
                }
            }
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Decimal) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Decimal {}

impl Amount {
    fn decimal(self) -> Decimal {
        match self {
            Amount::Int { value, scale } => Decimal {
                mantissa: i128::from(value),
                exponent: scale,
            },
            Amount::Dec(d) => d,
        }
    }

    /// `Quantity.AsInt64`: only the fast form converts, and only without a negative scale.
    fn as_i64(self) -> Option<i64> {
        match self {
            Amount::Int { value, scale: 0 } => Some(value),
            Amount::Int { value, scale } if scale > 0 => {
                value.checked_mul(10i64.checked_pow(u32::try_from(scale).ok()?)?)
            }
            _ => None,
        }
    }

    /// `Quantity.Add`: the fast form while it does not overflow, else decimal.
    fn add(self, other: Amount) -> Result<Amount, &'static str> {
        if let (
            Amount::Int {
                value: a,
                scale: sa,
            },
            Amount::Int {
                value: b,
                scale: sb,
            },
        ) = (self, other)
            && let Some(sum) = int_add(a, sa, b, sb)
        {
            return Ok(sum);
        }
        self.decimal()
            .checked_add(other.decimal())
            .map(Amount::Dec)
            .ok_or(TOO_LARGE)
    }

    /// `Quantity.Sub`.
    fn sub(self, other: Amount) -> Result<Amount, &'static str> {
        if let (Amount::Int { .. }, Amount::Int { value, scale }) = (self, other)
            && let Some(negated) = value.checked_neg()
            && let Ok(Amount::Int { value, scale }) = self.add(Amount::Int {
                value: negated,
                scale,
            })
        {
            return Ok(Amount::Int { value, scale });
        }
        let negated = other.decimal().checked_neg().ok_or(TOO_LARGE)?;
        self.decimal()
            .checked_add(negated)
            .map(Amount::Dec)
            .ok_or(TOO_LARGE)
    }

    /// `Quantity.AsApproximateFloat64`.
    fn approximate_float(self) -> f64 {
        let (base, exponent) = match self {
            Amount::Int { value, scale } => (value as f64, scale),
            Amount::Dec(d) => (d.mantissa as f64, d.exponent),
        };
        if exponent == 0 {
            base
        } else {
            base * go_pow10(exponent)
        }
    }
}

/// `int64Amount.Add`: `None` on overflow (the caller falls back to decimals).
fn int_add(a: i64, sa: i32, b: i64, sb: i32) -> Option<Amount> {
    let scaled = |v: i64, by: i32| -> Option<i64> {
        v.checked_mul(10i64.checked_pow(u32::try_from(by).ok()?)?)
    };
    let (value, scale) = if b == 0 {
        (a, sa)
    } else if a == 0 {
        (b, sb)
    } else if sa == sb {
        (a.checked_add(b)?, sa)
    } else if sa > sb {
        (scaled(a, sa - sb)?.checked_add(b)?, sb)
    } else {
        (a.checked_add(scaled(b, sb - sa)?)?, sa)
    };
    Some(Amount::Int { value, scale })
}

/// Go's `math.Pow10`, table products included, so that `asApproximateFloat` rounds as the API
/// server does.
fn go_pow10(n: i32) -> f64 {
    let exact = |k: i32| format!("1e{k}").parse::<f64>().unwrap_or(f64::NAN);
    match n {
        0..=308 => exact(n / 32 * 32) * exact(n % 32),
        -323..=-1 => exact(n / 32 * 32) / exact(-(n % 32)),
        n if n > 0 => f64::INFINITY,
        _ => 0.0,
    }
}

/// The messages of the API machinery's parse errors.
const FORMAT_WRONG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
const NUMERIC: &str = "unable to parse numeric part of quantity";
const SUFFIX: &str = "unable to parse quantity's suffix";

/// The parts `parseQuantityString` finds.
struct Parts<'a> {
    positive: bool,
    /// Sign, digits, point and fraction as written.
    value: &'a str,
    /// Whole digits without leading zeros ("0" when there are none).
    num: &'a str,
    /// Fraction digits.
    denom: &'a str,
    suffix: &'a str,
}

/// `parseQuantityString` of the API machinery.
fn scan(s: &str) -> Result<Parts<'_>, &'static str> {
    let b = s.as_bytes();
    let end = b.len();
    let mut pos = 0;
    let mut positive = true;
    if let Some(&c) = b.first() {
        if c == b'-' {
            positive = false;
            pos += 1;
        } else if c == b'+' {
            pos += 1;
        }
    }
    while pos < end && b[pos] == b'0' {
        pos += 1;
    }
    if pos >= end {
        return Ok(Parts {
            positive,
            value: "0",
            num: "0",
            denom: "",
            suffix: "",
        });
    }
    let start = pos;
    while pos < end && b[pos].is_ascii_digit() {
        pos += 1;
    }
    let mut num = &s[start..pos];
    if pos >= end {
        return Ok(Parts {
            positive,
            value: s,
            num,
            denom: "",
            suffix: "",
        });
    }
    if num.is_empty() {
        num = "0";
    }
    let mut denom = "";
    if b[pos] == b'.' {
        pos += 1;
        let start = pos;
        while pos < end && b[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &s[start..pos];
        if pos >= end {
            return Ok(Parts {
                positive,
                value: s,
                num,
                denom,
                suffix: "",
            });
        }
    }
    let value = &s[..pos];
    let suffix_start = pos;
    while pos < end && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if pos < end && matches!(b[pos], b'-' | b'+') {
        pos += 1;
    }
    while pos < end && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < end {
        return Err(FORMAT_WRONG);
    }
    Ok(Parts {
        positive,
        value,
        num,
        denom,
        suffix: &s[suffix_start..],
    })
}

/// What a suffix means: base, exponent, and whether it is binary (`Ki`…`Ei`).
fn interpret(suffix: &str) -> Option<(u32, i32, Format)> {
    let decimal = [
        ("", 0),
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
        ("E", 18),
    ];
    let binary = [
        ("Ki", 10),
        ("Mi", 20),
        ("Gi", 30),
        ("Ti", 40),
        ("Pi", 50),
        ("Ei", 60),
    ];
    if let Some((_, e)) = decimal.iter().find(|(s, _)| *s == suffix) {
        return Some((10, *e, Format::DecimalSi));
    }
    if let Some((_, e)) = binary.iter().find(|(s, _)| *s == suffix) {
        return Some((2, *e, Format::BinarySi));
    }
    let exponent = suffix.strip_prefix(['e', 'E'])?;
    if exponent.is_empty() {
        return None;
    }
    Some((10, exponent.parse::<i32>().ok()?, Format::DecimalExponent))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    DecimalSi,
    DecimalExponent,
    BinarySi,
}

/// `resource.ParseQuantity`.
pub fn parse(s: &str) -> Result<Quantity, &'static str> {
    if s.is_empty() {
        return Err(FORMAT_WRONG);
    }
    if s == "0" {
        return Ok(Quantity(Amount::Int { value: 0, scale: 0 }));
    }
    let parts = scan(s)?;
    let (base, exponent, format) = interpret(parts.suffix).ok_or(SUFFIX)?;
    let digits = i32::try_from(parts.num.len() + parts.denom.len()).unwrap_or(i32::MAX);
    let (precision, mut scale, mantissa) = match format {
        Format::DecimalSi | Format::DecimalExponent => (18 - digits, exponent, 1i64),
        Format::BinarySi if exponent >= 0 && parts.denom.is_empty() => {
            let num_len = i32::try_from(parts.num.len()).unwrap_or(i32::MAX);
            (15 - num_len - exponent * 3 / 10 - 1, 0, 1i64 << exponent)
        }
        Format::BinarySi => (-1, 0, 1),
    };
    if precision >= 0 {
        scale -= i32::try_from(parts.denom.len()).unwrap_or(i32::MAX);
        if scale >= -9 {
            let shifted = format!("{}{}", parts.num, parts.denom);
            let value = shifted.parse::<i64>().map_err(|_| NUMERIC)?;
            if let Some(result) = value.checked_mul(mantissa) {
                let value = if parts.positive { result } else { -result };
                return Ok(Quantity(Amount::Int { value, scale }));
            }
        }
    }
    // The decimal form: the value as written, the suffix folded in, rounded up to nano.
    let written = parts.value.trim_start_matches(['+', '-']);
    let (whole, fraction) = written.split_once('.').unwrap_or((written, ""));
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 38 {
        return Err(TOO_LARGE);
    }
    let mut magnitude = Decimal {
        mantissa: if digits.is_empty() {
            0
        } else {
            digits.parse::<i128>().map_err(|_| NUMERIC)?
        },
        exponent: -i32::try_from(fraction.len()).unwrap_or(i32::MAX),
    };
    if base == 10 {
        magnitude.exponent = magnitude.exponent.checked_add(exponent).ok_or(TOO_LARGE)?;
    } else {
        magnitude.mantissa = magnitude
            .mantissa
            .checked_mul(1i128 << exponent)
            .ok_or(TOO_LARGE)?;
    }
    if magnitude.mantissa != 0 && magnitude.exponent < -9 {
        // Rounded up (away from zero) to the smallest representable amount, 1n.
        let shift = u32::try_from(-9i64 - i64::from(magnitude.exponent)).unwrap_or(u32::MAX);
        magnitude = match pow10(shift) {
            Some(divisor) => Decimal {
                mantissa: magnitude.mantissa.div_ceil_positive(divisor),
                exponent: -9,
            },
            None => Decimal {
                mantissa: 1,
                exponent: -9,
            },
        };
    }
    let max = Decimal {
        mantissa: i128::from(i64::MAX),
        exponent: 0,
    };
    if format == Format::BinarySi && magnitude > max {
        magnitude = max;
    }
    if !parts.positive {
        magnitude.mantissa = -magnitude.mantissa;
    }
    Ok(Quantity(Amount::Dec(magnitude)))
}

trait DivCeil {
    fn div_ceil_positive(self, divisor: i128) -> i128;
}

impl DivCeil for i128 {
    /// `self / divisor` rounded up, for a non-negative `self` and a positive `divisor`.
    fn div_ceil_positive(self, divisor: i128) -> i128 {
        self / divisor + i128::from(self % divisor != 0)
    }
}

fn quantity(s: &CelString<'_>) -> Result<Quantity, ExecutionError> {
    parse(s.inner()).map_err(|e| error("quantity", e))
}

fn is_quantity(s: &CelString<'_>) -> CelBool {
    CelBool::from(parse(s.inner()).is_ok())
}

fn sign(q: &Quantity) -> CelInt {
    CelInt::from(q.0.decimal().sign())
}

fn is_integer(q: &Quantity) -> CelBool {
    CelBool::from(q.0.as_i64().is_some())
}

fn as_integer(q: &Quantity) -> Result<CelInt, ExecutionError> {
    q.0.as_i64()
        .map(CelInt::from)
        .ok_or_else(|| error("asInteger", "cannot convert value to integer"))
}

fn as_approximate_float(q: &Quantity) -> CelDouble {
    CelDouble::from(q.0.approximate_float())
}

fn compare(a: &Quantity, b: &Quantity) -> Ordering {
    a.0.decimal().cmp(&b.0.decimal())
}

fn is_greater_than(a: &Quantity, b: &Quantity) -> CelBool {
    CelBool::from(compare(a, b) == Ordering::Greater)
}

fn is_less_than(a: &Quantity, b: &Quantity) -> CelBool {
    CelBool::from(compare(a, b) == Ordering::Less)
}

fn compare_to(a: &Quantity, b: &Quantity) -> CelInt {
    CelInt::from(compare(a, b) as i64)
}

fn add(a: &Quantity, b: &Quantity) -> Result<Quantity, ExecutionError> {
    a.0.add(b.0).map(Quantity).map_err(|e| error("add", e))
}

fn add_int(a: &Quantity, b: &CelInt) -> Result<Quantity, ExecutionError> {
    add(a, &int(b))
}

fn sub(a: &Quantity, b: &Quantity) -> Result<Quantity, ExecutionError> {
    a.0.sub(b.0).map(Quantity).map_err(|e| error("sub", e))
}

fn sub_int(a: &Quantity, b: &CelInt) -> Result<Quantity, ExecutionError> {
    sub(a, &int(b))
}

/// `resource.NewQuantity(i, DecimalExponent)`.
fn int(i: &CelInt) -> Quantity {
    Quantity(Amount::Int {
        value: *i.inner(),
        scale: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{check, eval};
    use super::*;

    /// A parse result: mantissa, exponent and whether the fast form holds it.
    type Parsed = Option<(i128, i32, bool)>;

    #[test]
    fn parsing_follows_the_api_machinery() {
        let cases: &[(&str, Parsed)] = &[
            // (input, Some((mantissa, exponent, fast form)) or None for an error)
            ("0", Some((0, 0, true))),
            ("100m", Some((100, -3, true))),
            ("1.5", Some((15, -1, true))),
            ("1Gi", Some((1 << 30, 0, true))),
            ("-2Ki", Some((-2048, 0, true))),
            ("1.5Gi", Some((16_106_127_360, -1, false))),
            ("2e3", Some((2, 3, true))),
            ("2E-3", Some((2, -3, true))),
            ("+.5", Some((5, -1, true))),
            ("1.", Some((1, 0, true))),
            ("0.1n", Some((1, -9, false))),
            ("-0.1n", Some((-1, -9, false))),
            (
                "12345678901234567890",
                Some((12_345_678_901_234_567_890, 0, false)),
            ),
            ("16Ei", Some((i128::from(i64::MAX), 0, false))),
            ("007", Some((7, 0, true))),
            ("", None),
            ("200K", None),
            ("Three", None),
            // The API machinery reads a missing number as zero (its documentation says "error").
            ("Mi", Some((0, 0, true))),
            ("1,3G", None),
            ("1e", None),
            ("1.2.3", None),
            ("- 1", None),
        ];
        for (input, want) in cases {
            let got = parse(input).ok().map(|q| {
                let d = q.0.decimal();
                (d.mantissa, d.exponent, matches!(q.0, Amount::Int { .. }))
            });
            let normalised = |v: Parsed| {
                v.map(|(m, e, fast)| {
                    (
                        Quantity(Amount::Dec(Decimal {
                            mantissa: m,
                            exponent: e,
                        })),
                        fast,
                    )
                })
            };
            match (normalised(got), normalised(*want)) {
                (Some((g, gf)), Some((w, wf))) => {
                    assert!(g == w && gf == wf, "{input}: got {got:?}, want {want:?}")
                }
                (None, None) => {}
                _ => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_kubernetes_examples_hold() {
        check(
            &[
                "isQuantity('1.3G') && isQuantity('1.3Gi') && isQuantity('10000k')",
                "!isQuantity('1,3G') && !isQuantity('200K') && !isQuantity('Three')",
                "quantity('50000000G').isInteger()",
                "quantity('50k').isInteger() && quantity('50k').asInteger() == 50000",
                "!quantity('9999999999999999999999999999999999999G').isInteger()",
                "!quantity('1.5Gi').isInteger() && !quantity('1000m').isInteger()",
                "quantity('50k').sub(20000).asApproximateFloat() == 30000.0",
                "quantity('50k').add(quantity('20k')) == quantity('70k')",
                "quantity('50k').add(20) == quantity('50020')",
                "quantity('50k').sub(quantity('20k')) == quantity('30k')",
                "quantity('50k').add(20).sub(quantity('100k')).sub(-50000) == quantity('20')",
                "quantity('200M').compareTo(quantity('0.2G')) == 0",
                "quantity('50M').compareTo(quantity('50Mi')) == -1",
                "quantity('50Mi').compareTo(quantity('50M')) == 1",
                "quantity('150Mi').isGreaterThan(quantity('100Mi'))",
                "!quantity('50Mi').isGreaterThan(quantity('100Mi'))",
                "quantity('50M').isLessThan(quantity('100M'))",
                "quantity('1000m') == quantity('1') && quantity('1Ki') != quantity('1k')",
                "sign(quantity('-1')) == -1 && sign(quantity('0')) == 0 && sign(quantity('1n')) == 1",
                "quantity('1.5').asApproximateFloat() == 1.5",
                "quantity('100Mi').asApproximateFloat() == 104857600.0",
                "quantity('9223372036854775807').add(1).compareTo(quantity('9223372036854775807')) == 1",
                "!quantity('9223372036854775807').add(1).isInteger()",
                "quantity('1e40').isGreaterThan(quantity('1'))",
                "quantity('-1e40').isLessThan(quantity('1'))",
            ],
            &[
                ("quantity('1').sign()", "sign"),
                ("quantity('200K')", "unable to parse quantity's suffix"),
                (
                    "quantity('1,3G')",
                    "quantities must match the regular expression",
                ),
                (
                    "quantity('9999999999999999999999999999999999999G').asInteger()",
                    "cannot convert value to integer",
                ),
                ("quantity('1') < quantity('2')", ""),
            ],
        );
        assert!(eval("quantity('1e1000').add(quantity('1'))").is_err());
    }

    #[test]
    fn go_pow10_matches_the_table() {
        assert_eq!(go_pow10(3), 1000.0);
        assert_eq!(go_pow10(-3), 0.001);
        assert_eq!(go_pow10(400), f64::INFINITY);
        assert_eq!(go_pow10(-400), 0.0);
    }
}
