//! Face and plate tracks across frames: IoU association with a short memory,
//! so that a person walking up is one track, embedded once and judged for
//! liveness over several frames, and a car is read until its plate is
//! confirmed, instead of a full network pass on every frame.
//!
//! Pure bookkeeping (boxes in, track ids out): the worker runs the networks
//! and asks each track what it still needs.

use crate::face::iou;
use domain::gate::plate::Voter;
use std::time::Instant;

/// One face followed across frames.
#[derive(Debug, Clone)]
pub struct Track {
    pub id: u64,
    pub bbox: [f32; 4],
    /// Capture time of the track's first frame: the decision latency starts here.
    pub born: Instant,
    /// Analysed frames since this track last matched a box.
    missed: u32,
    /// The face was lost for a frame or more and found again since the last
    /// embedding: it may be someone else who stepped into the same place.
    pub refound: bool,
    /// Embeddings computed for this track, the last one's time, and what it said.
    pub embeds: u32,
    pub last_embed: Option<Instant>,
    pub identity: Option<Identity>,
    /// Per-frame liveness scores.
    pub live: Vec<f32>,
    /// When a snapshot of this (unknown) face was last sent.
    pub snapshot_at: Option<Instant>,
}

/// The gallery's answer for a track's embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The best enrolled person at or above the match threshold.
    pub person: Option<String>,
    pub score: f32,
    /// Lead over the best other person.
    pub margin: f32,
    /// Sure enough to decide without another embedding.
    pub strong: bool,
}

impl Track {
    /// Embed again only while the identity is not settled: none yet, or a
    /// borderline one (the policy then wants independent agreeing frames),
    /// up to `max_embeds`; after that an unsettled track is looked at again
    /// once every `RECHECK` (someone standing at the gate while enrolled).
    pub fn wants_embedding(&self, max_embeds: u32, now: Instant) -> bool {
        match &self.identity {
            None => true,
            Some(i) if i.strong => self.refound,
            Some(_) if self.embeds < max_embeds => true,
            Some(_) => self.last_embed.is_none_or(|t| now.saturating_duration_since(t) >= RECHECK),
        }
    }

    /// Forget the identity (the gallery changed): the next frame embeds again.
    pub fn forget_identity(&mut self) {
        self.identity = None;
        self.embeds = 0;
    }

    /// Record an embedding's answer. A different person than the settled
    /// identity means someone else took this place: their liveness starts over.
    pub fn identified(&mut self, id: Identity, at: Instant) {
        if self.identity.as_ref().is_some_and(|old| old.strong && old.person != id.person) {
            self.live.clear();
        }
        self.identity = Some(id);
        self.embeds += 1;
        self.last_embed = Some(at);
        self.refound = false;
    }

    /// Liveness runs until the track holds `max_frames` scores, and goes on
    /// (over the last `max_frames`) while their median stays below
    /// `threshold`: a face first seen small and far away is judged again as
    /// it comes closer, and a photo held up keeps failing.
    pub fn wants_liveness(&self, max_frames: u32, threshold: f32) -> bool {
        (self.live.len() as u32) < max_frames || self.liveness().is_some_and(|m| m < threshold)
    }

    /// Add a liveness score, keeping the last `max_frames`.
    pub fn add_liveness(&mut self, score: f32, max_frames: u32) {
        self.live.push(score);
        let max = max_frames.max(1) as usize;
        if self.live.len() > max {
            self.live.drain(..self.live.len() - max);
        }
    }

    /// Identified for good and judged live: nothing left to run but the detector.
    pub fn settled(&self, max_frames: u32, threshold: f32) -> bool {
        self.identity.as_ref().is_some_and(|i| i.strong) && !self.wants_liveness(max_frames, threshold)
    }

    /// An unknown face is photographed once per `SNAPSHOT_EVERY` of its
    /// track, not on every frame: the daemon keeps the latest for the
    /// decision, and a JPEG costs 5–10 ms of the frame's path.
    pub fn snapshot_due(&mut self, now: Instant) -> bool {
        let due = self.snapshot_at.is_none_or(|t| now.saturating_duration_since(t) >= SNAPSHOT_EVERY);
        if due {
            self.snapshot_at = Some(now);
        }
        due
    }

    /// The median of the per-frame liveness scores (None before the first).
    pub fn liveness(&self) -> Option<f32> {
        median(&self.live)
    }
}

/// How often an unknown face's track sends a snapshot.
pub const SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a track whose identity stays unsettled is embedded again.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub fn median(v: &[f32]) -> Option<f32> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// A face or a plate followed across frames.
trait Followed {
    fn bbox(&self) -> [f32; 4];
    fn moved(&mut self, to: [f32; 4]);
    /// Matched a box in this frame, or missed it; how many frames it has missed since.
    fn seen(&mut self, matched: bool) -> u32;
    fn id(&self) -> u64;
}

/// Associate a frame's boxes with the open tracks (greedy IoU, best overlap
/// first), open a track for each box left over, and close the tracks missing
/// for more than `max_missed` frames. Returns the track id of each box.
fn follow<T: Followed>(
    tracks: &mut Vec<T>,
    next: &mut u64,
    boxes: &[[f32; 4]],
    min_iou: f32,
    max_missed: u32,
    mut open: impl FnMut(u64, [f32; 4]) -> T,
) -> Vec<u64> {
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (b, bx) in boxes.iter().enumerate() {
        for (t, tr) in tracks.iter().enumerate() {
            let o = iou(bx, &tr.bbox());
            if o >= min_iou {
                pairs.push((o, b, t));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut box_track: Vec<Option<usize>> = vec![None; boxes.len()];
    let mut taken = vec![false; tracks.len()];
    for (_, b, t) in pairs {
        if box_track[b].is_none() && !taken[t] {
            box_track[b] = Some(t);
            taken[t] = true;
        }
    }
    let missed: Vec<u32> = tracks.iter_mut().zip(&taken).map(|(t, &k)| t.seen(k)).collect();
    let mut keep: Vec<bool> = missed.iter().map(|&m| m <= max_missed).collect();
    let ids = boxes
        .iter()
        .zip(box_track)
        .map(|(bx, t)| match t {
            Some(t) => {
                tracks[t].moved(*bx);
                tracks[t].id()
            }
            None => {
                let id = *next;
                *next += 1;
                tracks.push(open(id, *bx));
                keep.push(true);
                id
            }
        })
        .collect();
    let mut k = keep.into_iter();
    tracks.retain(|_| k.next().unwrap_or(true));
    ids
}

impl Followed for Track {
    fn bbox(&self) -> [f32; 4] {
        self.bbox
    }
    fn moved(&mut self, to: [f32; 4]) {
        self.bbox = to;
    }
    fn seen(&mut self, matched: bool) -> u32 {
        if matched {
            // Lost for a frame or more and found again: maybe someone else.
            self.refound |= self.missed > 0;
            self.missed = 0;
        } else {
            self.missed += 1;
        }
        self.missed
    }
    fn id(&self) -> u64 {
        self.id
    }
}

impl Followed for PlateTrack {
    fn bbox(&self) -> [f32; 4] {
        self.bbox
    }
    fn moved(&mut self, to: [f32; 4]) {
        self.bbox = to;
    }
    fn seen(&mut self, matched: bool) -> u32 {
        self.missed = if matched { 0 } else { self.missed + 1 };
        self.missed
    }
    fn id(&self) -> u64 {
        self.id
    }
}

/// One plate followed across frames.
#[derive(Debug, Clone)]
pub struct PlateTrack {
    pub id: u64,
    bbox: [f32; 4],
    missed: u32,
    /// The gate policy's own vote counter, fed this track's reads: once it
    /// confirms, the policy (fed the same reads) has confirmed too.
    voter: Voter,
    /// The last read is of a plate the voter has confirmed. A read of another
    /// plate (another car took this place, or an OCR slip) clears it until
    /// a confirmed plate is read again.
    pub confirmed: bool,
    last_read: Option<Instant>,
}

/// The plates of one camera. OCR (warp, colour, recognition: about 20 ms of
/// a plate frame's 29) runs on a plate until its reads confirm it, then once
/// every `RECHECK` while the car stays (the policy's "still at the
/// barrier"); a car waiting at the barrier costs only its detection.
#[derive(Debug, Clone)]
pub struct PlateTracker {
    tracks: Vec<PlateTrack>,
    next: u64,
    template: Voter,
    /// Monotonic time for the voter's timestamps.
    epoch: Instant,
    pub min_iou: f32,
    pub max_missed: u32,
    /// OCR runs, for the metrics.
    pub reads: u64,
}

impl PlateTracker {
    pub fn new(s: &domain::gate::policy::Settings) -> Self {
        let template = Voter::new(s.plate_votes, s.plate_sure, s.plate_gone_after).with_province_min(s.plate_province_min);
        PlateTracker { tracks: Vec::new(), next: 1, template, epoch: Instant::now(), min_iou: 0.3, max_missed: 3, reads: 0 }
    }

    /// Associate this frame's plate boxes with the open tracks; returns the
    /// track id of each box, in order.
    pub fn update(&mut self, boxes: &[[f32; 4]]) -> Vec<u64> {
        let template = &self.template;
        follow(&mut self.tracks, &mut self.next, boxes, self.min_iou, self.max_missed, |id, bbox| PlateTrack {
            id,
            bbox,
            missed: 0,
            voter: template.clone(),
            confirmed: false,
            last_read: None,
        })
    }

    /// Whether this plate is worth the OCR now.
    pub fn wants_read(&self, id: u64, now: Instant) -> bool {
        self.tracks.iter().find(|t| t.id == id).is_none_or(|t| !t.confirmed || t.last_read.is_none_or(|r| now.saturating_duration_since(r) >= RECHECK))
    }

    /// Record a read (a GA 36-shaped one feeds the vote, as at the policy).
    pub fn read(&mut self, id: u64, text: Option<(&str, f32, f32)>, at: Instant) {
        self.reads += 1;
        let now = chrono::DateTime::UNIX_EPOCH + chrono::Duration::from_std(at.saturating_duration_since(self.epoch)).unwrap_or_default();
        if let Some(t) = self.tracks.iter_mut().find(|t| t.id == id) {
            t.last_read = Some(at);
            if let Some((plate, conf, province)) = text {
                t.voter.read("", plate, conf, province, now);
                t.confirmed = t.voter.is_confirmed("", plate);
            }
        }
    }

    /// A plate in view is not confirmed yet (the camera is worth the tracking rate).
    pub fn undecided(&self) -> bool {
        self.tracks.iter().any(|t| !t.confirmed)
    }
}

/// The tracks of one camera.
#[derive(Debug, Clone)]
pub struct Tracker {
    tracks: Vec<Track>,
    next: u64,
    /// A box continues a track only if it overlaps it this much. Faces
    /// walking up at 5–15 fps overlap well above it; two people side by side
    /// do not overlap at all.
    pub min_iou: f32,
    /// A track survives this many analysed frames without its face (a frame
    /// where the detector blinks), then closes.
    pub max_missed: u32,
    /// Tracks ever opened, and embeddings computed for them (for the metrics).
    pub opened: u64,
    pub embedded: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker { tracks: Vec::new(), next: 1, min_iou: 0.3, max_missed: 3, opened: 0, embedded: 0 }
    }
}

impl Tracker {
    /// Associate this frame's face boxes with the open tracks (greedy, best
    /// overlap first), open a track for each box left over, and close tracks
    /// missing too long. Returns the track id of each box, in order.
    pub fn update(&mut self, boxes: &[[f32; 4]], at: Instant) -> Vec<u64> {
        let opened = &mut self.opened;
        follow(&mut self.tracks, &mut self.next, boxes, self.min_iou, self.max_missed, |id, bbox| {
            *opened += 1;
            Track { id, bbox, born: at, missed: 0, refound: false, embeds: 0, last_embed: None, identity: None, live: Vec::new(), snapshot_at: None }
        })
    }

    /// The gallery changed: every open track is identified again.
    pub fn forget_identities(&mut self) {
        self.tracks.iter_mut().for_each(Track::forget_identity);
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Track> {
        self.tracks.iter_mut().find(|t| t.id == id)
    }

    /// Someone is in front of the camera (or was, a frame or two ago).
    pub fn is_open(&self) -> bool {
        !self.tracks.is_empty()
    }

    /// A track still needs frames to be decided (the camera is worth the tracking rate).
    pub fn undecided(&self, max_frames: u32, threshold: f32) -> bool {
        self.tracks.iter().any(|t| !t.settled(max_frames, threshold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn walk(x: f32, size: f32) -> [f32; 4] {
        [x, 100.0, size, size]
    }

    #[test]
    fn a_face_walking_up_keeps_one_track_and_a_second_person_gets_another() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let mut ids = Vec::new();
        // Walking up: the box grows and drifts a little each frame.
        for i in 0..10 {
            ids.push(t.update(&[walk(300.0 + i as f32 * 4.0, 80.0 + i as f32 * 6.0)], now)[0]);
        }
        assert!(ids.iter().all(|&i| i == ids[0]), "{ids:?}");
        // Someone else appears beside them: a new track; the first keeps its id.
        let two = t.update(&[walk(340.0, 140.0), walk(900.0, 90.0)], now);
        assert_eq!(two[0], ids[0]);
        assert_ne!(two[1], ids[0]);
        assert_eq!(t.opened, 2);
    }

    #[test]
    fn a_track_survives_a_missed_frame_and_closes_after_max_missed() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let id = t.update(&[walk(300.0, 100.0)], now)[0];
        for _ in 0..t.max_missed {
            t.update(&[], now + Duration::from_millis(100));
        }
        assert!(t.is_open());
        assert_eq!(t.update(&[walk(305.0, 102.0)], now)[0], id, "the detector blinked; same person");
        for _ in 0..=t.max_missed {
            t.update(&[], now);
        }
        assert!(!t.is_open());
        assert_ne!(t.update(&[walk(305.0, 102.0)], now)[0], id, "gone too long: a new track");
    }

    #[test]
    fn a_strong_identity_stops_embedding_and_a_borderline_one_embeds_up_to_the_cap_then_once_a_second() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let id = t.update(&[walk(0.0, 100.0)], now)[0];
        let tr = t.get_mut(id).unwrap();
        assert!(tr.wants_embedding(5, now));
        tr.embeds = 1;
        tr.last_embed = Some(now);
        tr.identity = Some(Identity { person: Some("R1".into()), score: 0.8, margin: 0.5, strong: true });
        assert!(!tr.wants_embedding(5, now + Duration::from_secs(60)), "settled for the whole track");
        tr.identity = Some(Identity { person: Some("R1".into()), score: 0.4, margin: 0.5, strong: false });
        assert!(tr.wants_embedding(5, now));
        tr.embeds = 5;
        assert!(!tr.wants_embedding(5, now + Duration::from_millis(200)));
        assert!(tr.wants_embedding(5, now + RECHECK), "still unsettled: looked at again, sparingly");
        // A new enrolment: every open track is identified again at once.
        t.forget_identities();
        let tr = t.get_mut(id).unwrap();
        assert!(tr.identity.is_none() && tr.wants_embedding(5, now));
    }

    #[test]
    fn a_settled_track_whose_face_was_lost_is_identified_again_and_a_new_person_starts_liveness_over() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let id = t.update(&[walk(300.0, 100.0)], now)[0];
        let strong = |p: &str| Identity { person: Some(p.into()), score: 0.8, margin: 0.5, strong: true };
        let tr = t.get_mut(id).unwrap();
        tr.identified(strong("R1"), now);
        tr.live = vec![0.9, 0.95];
        assert!(!tr.wants_embedding(5, now));
        // Followed without a gap: never embedded again.
        t.update(&[walk(302.0, 101.0)], now);
        assert!(!t.get_mut(id).unwrap().wants_embedding(5, now));
        // The face is lost for a frame, then a face is found in the same place.
        t.update(&[], now);
        assert_eq!(t.update(&[walk(303.0, 101.0)], now)[0], id);
        let tr = t.get_mut(id).unwrap();
        assert!(tr.wants_embedding(5, now), "who is it now?");
        tr.identified(strong("R2"), now);
        assert!(tr.live.is_empty(), "someone else: liveness starts over");
        assert_eq!((tr.embeds, tr.refound), (2, false));
    }

    #[test]
    fn liveness_is_the_median_so_one_bad_frame_does_not_decide() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.1, 0.9, 0.95]), Some(0.9));
        assert_eq!(median(&[0.2, 0.8]), Some(0.5));
        let mut t = Tracker::default();
        let id = t.update(&[walk(0.0, 100.0)], Instant::now())[0];
        let tr = t.get_mut(id).unwrap();
        tr.live = vec![0.05, 0.97, 0.93, 0.99];
        assert!(tr.liveness().unwrap() > 0.9);
        assert!(!tr.wants_liveness(4, 0.5), "judged: no more liveness runs");
        // Failing: judged again on every frame, over the last four.
        tr.live = vec![0.1, 0.2, 0.3, 0.4];
        assert!(tr.wants_liveness(4, 0.5));
        for s in [0.8, 0.9, 0.85] {
            tr.add_liveness(s, 4);
        }
        assert_eq!(tr.live, vec![0.4, 0.8, 0.9, 0.85]);
        assert!(!tr.wants_liveness(4, 0.5), "came closer and passed");
    }

    #[test]
    fn a_plate_is_read_until_its_reads_confirm_it_then_once_a_second_and_a_doubtful_province_needs_more() {
        let s = domain::gate::policy::Settings::default(); // 3 votes, sure at 0.97, province at 0.8
        let mut t = PlateTracker::new(&s);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let plate = |x: f32| [x, 400.0, 120.0, 40.0];
        let id = t.update(&[plate(500.0)])[0];
        // Two sure-province reads at 0.9, and one with a doubtful province: 2 + ½ votes.
        for (i, province) in [0.95, 0.95, 0.5].into_iter().enumerate() {
            assert!(t.wants_read(id, at(i as u64 * 100)));
            t.read(id, Some(("川A35D98", 0.9, province)), at(i as u64 * 100));
            assert_eq!(t.update(&[plate(503.0 + i as f32)])[0], id, "the car creeping forward is one track");
        }
        assert!(t.undecided() && t.wants_read(id, at(300)), "2½ votes of 3: read again");
        t.read(id, Some(("川A35D98", 0.9, 0.95)), at(300));
        assert!(!t.undecided(), "confirmed, as the policy's own voter would say");
        assert!(!t.wants_read(id, at(400)) && !t.wants_read(id, at(1200)), "a car waiting costs only its detection");
        assert!(t.wants_read(id, at(1300)), "…and one read a second while it stays");
        assert_eq!(t.reads, 4);
        // A read that is not a plate counts as a read but confirms nothing; another car is another track.
        let other = t.update(&[plate(505.0), [100.0, 100.0, 120.0, 40.0]])[1];
        assert_ne!(other, id);
        t.read(other, None, at(1400));
        assert!(t.undecided() && t.wants_read(other, at(1500)));
        // One very sure read with a sure province confirms alone.
        t.read(other, Some(("粤B12345", 0.99, 0.99)), at(1500));
        assert!(!t.undecided());
        // Another car pulls into the first one's place: its plate is read at
        // full rate until confirmed, not once a second.
        t.read(id, Some(("川A88888", 0.9, 0.95)), at(1600));
        assert!(t.undecided() && t.wants_read(id, at(1700)));
        // An OCR slip on a confirmed car is not another car for long: the next
        // read of the confirmed plate settles the track again.
        t.read(id, Some(("川A35D98", 0.9, 0.95)), at(1700));
        assert!(!t.undecided() && !t.wants_read(id, at(1800)));
    }
}
