//! Central finite differences in f64, the check every backward CPU reference passes: for a
//! scalar loss L(x) = sum(g · f(x)) with a fixed random g, dL/dx_i is compared with
//! (L(x + h e_i) - L(x - h e_i)) / 2h. With h = 1e-5 in f64 the truncation error is ~h² |f'''|
//! and the rounding error ~1e-16 / h, both far below the 1e-6 the checks allow.

/// Compares `analytic` (dL/dx) with central differences of `loss` around `x`.
pub fn check(what: &str, x: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) -> Result<(), String> {
    if x.len() != analytic.len() {
        return Err(format!("{what}: {} gradients for {} inputs", analytic.len(), x.len()));
    }
    let h = 1e-5;
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + h;
        let up = loss(&xp);
        xp[i] = x[i] - h;
        let down = loss(&xp);
        xp[i] = x[i];
        let numeric = (up - down) / (2.0 * h);
        if (numeric - analytic[i]).abs() > 1e-6 + 1e-6 * numeric.abs() {
            return Err(format!("{what} index {i}: finite difference {numeric}, analytic {}", analytic[i]));
        }
    }
    Ok(())
}

/// sum(g · y): the scalar a backward test differentiates, g standing for dL/dy.
pub fn dot(g: &[f64], y: &[f64]) -> f64 {
    g.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// `crate::ops::test_values` as f64.
pub fn values(n: usize, seed: u64) -> Vec<f64> {
    crate::ops::test_values(n, seed).into_iter().map(f64::from).collect()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
