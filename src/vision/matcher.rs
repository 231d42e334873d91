//! 1:N matching of L2-normalised 128-d embeddings. A person may have several.
//! A flat, contiguous gallery keeps the scan cache-friendly: 50,000 probes'
//! worth of dot products is one linear pass.

pub const DIM: usize = 128;

#[derive(Debug, Clone, Default)]
pub struct Gallery {
    data: Vec<f32>,
    owners: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub person: String,
    pub score: f32,
}

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
        self.data.extend_from_slice(embedding);
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
        let mut best: Option<(usize, f32)> = None;
        for (i, e) in self.data.chunks_exact(DIM).enumerate() {
            let s = cosine(probe, e);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        best.map(|(i, score)| Match { person: self.owners[i].clone(), score })
    }
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
        assert!((m.score - 1.0).abs() < 1e-5);
        g.remove_person("b");
        assert_eq!(g.len(), 1);
        assert_eq!(g.best(&unit(3)).unwrap().person, "a");
    }
}
