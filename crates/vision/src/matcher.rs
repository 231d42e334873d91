//! 1:N matching of L2-normalised 128-d embeddings. A person may have several.
//! The gallery is one flat array of int8 templates with a scale each: a
//! 50,000-template scan is bound by memory bandwidth, and int8 reads a quarter
//! of the bytes of f32 (6.4 MB instead of 25.6 MB) for a score error under
//! 0.005, far below the gap between the threshold and either score population.

pub const DIM: usize = 128;

#[derive(Debug, Clone, Default)]
pub struct Gallery {
    data: Vec<i8>,
    scales: Vec<f32>,
    owners: Vec<String>,
}

fn quantize(v: &[f32]) -> (Vec<i8>, f32) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let s = max / 127.0;
    (v.iter().map(|x| (x / s).round().clamp(-127.0, 127.0) as i8).collect(), s)
}

/// Dot product of an f32 probe with an int8 template (before scaling).
#[inline(always)]
fn dot_q(p: &[f32], q: &[i8]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in p.chunks_exact(8).zip(q.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i] as f32;
        }
    }
    acc.iter().sum()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub person: String,
    pub score: f32,
}

#[inline(always)]
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl Gallery {
    pub fn add(&mut self, person: &str, embedding: &[f32]) {
        assert_eq!(embedding.len(), DIM, "embeddings are {DIM}-d");
        let (q, s) = quantize(embedding);
        self.data.extend_from_slice(&q);
        self.scales.push(s);
        self.owners.push(person.to_string());
    }

    pub fn remove_person(&mut self, person: &str) {
        let keep: Vec<bool> = self.owners.iter().map(|o| o != person).collect();
        let mut data = Vec::with_capacity(self.data.len());
        for (i, k) in keep.iter().enumerate() {
            if *k {
                data.extend_from_slice(&self.data[i * DIM..(i + 1) * DIM]);
            }
        }
        self.data = data;
        let mut i = 0;
        self.scales.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        self.owners.retain(|o| o != person);
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// The best-scoring enrolled embedding, whatever its score.
    pub fn best(&self, probe: &[f32]) -> Option<Match> {
        assert_eq!(probe.len(), DIM, "embeddings are {DIM}-d");
        scan(probe, &self.data, &self.scales).map(|(i, score)| Match { person: self.owners[i].clone(), score })
    }

    /// The best match and its lead over the best *other* person (1.0 when
    /// nobody else is enrolled): a high score with a twin close behind is
    /// not a match to decide on quickly. Runs once per track, not per frame.
    pub fn best_with_margin(&self, probe: &[f32]) -> Option<(Match, f32)> {
        let m = self.best(probe)?;
        let runner_up = self
            .data
            .chunks_exact(DIM)
            .zip(&self.scales)
            .zip(&self.owners)
            .filter(|(_, o)| **o != m.person)
            .map(|((e, s), _)| dot_q(probe, e) * s)
            .fold(None, |a: Option<f32>, s| Some(a.map_or(s, |a| a.max(s))));
        let margin = runner_up.map_or(1.0, |r| (m.score - r).max(0.0));
        Some((m, margin))
    }
}

/// Index and score of the best row. The generic body is compiled twice: as
/// is, and with AVX2+FMA for CPUs that have them (checked at run time), since
/// the release build targets baseline x86-64.
fn scan(probe: &[f32], data: &[i8], scales: &[f32]) -> Option<(usize, f32)> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { scan_avx2(probe, data, scales) };
    }
    scan_generic(probe, data, scales)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scan_avx2(probe: &[f32], data: &[i8], scales: &[f32]) -> Option<(usize, f32)> {
    scan_generic(probe, data, scales)
}

#[inline(always)]
fn scan_generic(probe: &[f32], data: &[i8], scales: &[f32]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, e) in data.chunks_exact(DIM).enumerate() {
        let s = dot_q(probe, e) * scales[i];
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM as u32).map(|i| ((i * 7919 + seed * 104729) % 1000) as f32 - 500.0).collect();
        normalize(&mut v);
        v
    }

    #[test]
    fn the_best_match_is_the_person_with_the_closest_embedding() {
        let mut g = Gallery::default();
        g.add("a", &unit(1));
        g.add("b", &unit(2));
        g.add("b", &unit(3));
        let m = g.best(&unit(3)).unwrap();
        assert_eq!(m.person, "b");
        assert!((m.score - 1.0).abs() < 5e-3, "{}", m.score);
        // Quantisation error stays small against exact f32 cosine.
        for (a, b) in [(1, 2), (2, 3), (1, 3)] {
            let mut h = Gallery::default();
            h.add("x", &unit(a));
            assert!((h.best(&unit(b)).unwrap().score - cosine(&unit(a), &unit(b))).abs() < 5e-3);
        }
        let (m, margin) = g.best_with_margin(&unit(3)).unwrap();
        assert_eq!(m.person, "b");
        assert!((margin - (m.score - cosine(&unit(1), &unit(3)))).abs() < 1e-2, "the lead over a, not over b's other template: {margin}");
        g.remove_person("b");
        assert_eq!(g.best_with_margin(&unit(3)).unwrap().1, 1.0, "nobody else enrolled");
        assert_eq!(g.len(), 1);
        assert_eq!(g.best(&unit(3)).unwrap().person, "a");
    }
}
