//! Gate access: residents, visitors and the deny list (credentials as keyed hashes), vehicles.

use super::*;

/// A person's record for gate access, with what the law asks us to keep.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PersonRecord {
    pub person: Person,
    /// Who consented, when, how and to which purpose (PIPL; 2025 Measures).
    #[serde(default)]
    pub consent: Option<Consent>,
    /// Visitors: "1101**********002X" and HMAC of the number, never the number.
    #[serde(default)]
    pub id_masked: Option<String>,
    #[serde(default)]
    pub id_hash: Option<String>,
    #[serde(default)]
    pub host_unit: Option<String>,
    #[serde(default)]
    pub plate: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Consent {
    pub by: String,
    pub at: Timestamp,
    /// "paper form", "app", …
    pub how: String,
    pub purpose: String,
}

impl Store {
    /// Insert or replace; refuses a PIN, card or QR already used by someone else.
    pub fn put_person(&self, r: &PersonRecord, must_be_new: bool) -> Result<()> {
        // The key is durable in its file before any record it seals.
        let key = self.person_key(&r.person.id, true)?.expect("created");
        let _w = self.writing();
        let p = &r.person;
        if must_be_new && self.t().people.contains_key(p.id.as_bytes())? {
            return Err(StoreError::Exists { what: "person", id: p.id.clone() });
        }
        for other in self.list_people()?.iter().filter(|o| o.person.id != p.id) {
            let o = &other.person;
            let clash = (p.pin_hash.is_some() && p.pin_hash == o.pin_hash)
                || p.cards.iter().any(|c| o.cards.contains(c))
                || (p.qr_hash.is_some() && p.qr_hash == o.qr_hash);
            if clash {
                return Err(StoreError::Exists { what: "credential (PIN, card or QR) of person", id: o.id.clone() });
            }
        }
        self.t().people.insert(p.id.as_bytes(), self.seal_person(r, &key))?;
        Ok(())
    }

    /// A whole roster file in one transaction: every person (with templates),
    /// elder (with the band index) and vehicle, or none of them.
    pub fn import_roster(&self, people: &[(PersonRecord, Vec<Vec<f32>>)], elders: &[Elder], vehicles: &[Vehicle]) -> Result<()> {
        let key = if people.iter().any(|(_, t)| !t.is_empty()) { Some(self.current_key()?) } else { None };
        // Ids before the transaction (a retried closure must not take new ones).
        let ids: Vec<&str> = people.iter().map(|(r, _)| r.person.id.as_str()).collect();
        let pkeys = self.person_keys_for(&ids, true)?;
        let mut sealed = Vec::new();
        let mut records = Vec::new();
        for ((r, ts), pk) in people.iter().zip(&pkeys) {
            let pk = pk.expect("created");
            records.push((r.person.id.as_bytes(), self.seal_person(r, &pk)));
            for e in ts {
                let k = self.template_key(&r.person.id)?;
                sealed.push((k, seal(&template_seal_key(key.as_ref().expect("a key when templates exist"), &pk), &r.person.id, e)));
            }
        }
        let vehicles: Vec<(Vec<u8>, Vec<u8>)> = vehicles.iter().map(|v| Ok((self.vehicle_index(&v.plate)?, self.seal_vehicle(v)?))).collect::<Result<_>>()?;
        let _w = self.writing();
        let res = (&self.t().people, &self.t().templates, &self.t().elders, &self.t().bands, &self.t().vehicles).transaction(|(pt, tt, et, bt, vt)| {
            for (id, r) in &records {
                pt.insert(*id, r.as_slice())?;
            }
            for (k, v) in &sealed {
                tt.insert(k.as_bytes(), v.as_slice())?;
            }
            for e in elders {
                if let Some(old) = et.get(e.id.as_bytes())? {
                    let old: Elder = dec("elders", &old).map_err(ConflictableTransactionError::Abort)?;
                    for b in &old.bands {
                        bt.remove(band_key(b))?;
                    }
                }
                for b in &e.bands {
                    if let Some(owner) = bt.get(band_key(b))? {
                        let owner = String::from_utf8_lossy(&owner).to_string();
                        if owner != e.id {
                            return Err(ConflictableTransactionError::Abort(StoreError::BandTaken { band: b.to_string(), elder: owner }));
                        }
                    }
                    bt.insert(band_key(b), e.id.as_bytes())?;
                }
                et.insert(e.id.as_bytes(), enc(e))?;
            }
            for (k, v) in &vehicles {
                vt.insert(k.as_slice(), v.as_slice())?;
            }
            Ok(())
        });
        res.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })
    }

    pub fn get_person(&self, id: &str) -> Result<Option<PersonRecord>> {
        Ok(self.t().people.get(id.as_bytes())?.map(|v| self.open_person(id.as_bytes(), &v)).transpose()?.flatten())
    }

    pub fn list_people(&self) -> Result<Vec<PersonRecord>> {
        let mut out = Vec::new();
        for kv in self.t().people.iter() {
            let (k, v) = kv?;
            out.extend(self.open_person(&k, &v)?);
        }
        Ok(out)
    }

    /// Remove a person with every face template and vehicle of theirs, make
    /// that durable, then shred their key: what sled leaves behind in its
    /// files can no longer be read (see `shred`).
    pub fn remove_person(&self, id: &str) -> Result<PersonRecord> {
        let r = self.get_person(id)?.ok_or_else(|| StoreError::NotFound { what: "person", id: id.into() })?;
        let plates: Vec<String> = self.list_vehicles()?.into_iter().filter(|v| v.owner == id).map(|v| v.plate).collect();
        {
            let _w = self.writing();
            self.remove_templates_locked(id)?;
            for p in &plates {
                self.t().vehicles.remove(self.vehicle_index(p)?)?;
            }
            self.t().people.remove(id.as_bytes())?;
        }
        self.forget_after_flush(id)?;
        Ok(r)
    }

    pub fn put_vehicle(&self, v: &Vehicle) -> Result<()> {
        let _w = self.writing();
        if let Some(old) = self.get_vehicle(&v.plate)? {
            if old.owner != v.owner {
                return Err(StoreError::Exists { what: "vehicle (owned by someone else)", id: v.plate.clone() });
            }
        }
        let (k, sealed) = (self.vehicle_index(&v.plate)?, self.seal_vehicle(v)?);
        self.t().vehicles.insert(k, sealed)?;
        Ok(())
    }

    pub fn get_vehicle(&self, plate: &str) -> Result<Option<Vehicle>> {
        Ok(self.t().vehicles.get(self.vehicle_index(plate)?)?.map(|v| self.open_vehicle(&v)).transpose()?.flatten())
    }

    pub fn list_vehicles(&self) -> Result<Vec<Vehicle>> {
        let mut out = Vec::new();
        for v in self.t().vehicles.iter().values() {
            out.extend(self.open_vehicle(&v?)?);
        }
        Ok(out)
    }

    pub fn remove_vehicle(&self, plate: &str) -> Result<Vehicle> {
        let v = self.get_vehicle(plate)?.ok_or_else(|| StoreError::NotFound { what: "vehicle", id: plate.into() })?;
        let _w = self.writing();
        self.t().vehicles.remove(self.vehicle_index(plate)?)?;
        Ok(v)
    }

    /// Replace a person and all their templates (enrolment sync).
    pub fn replace_person(&self, r: &PersonRecord, templates: &[Vec<f32>]) -> Result<()> {
        let key = self.current_key()?;
        let pk = self.person_key(&r.person.id, true)?.expect("created");
        let _w = self.writing();
        self.remove_templates_locked(&r.person.id)?;
        self.t().people.insert(r.person.id.as_bytes(), self.seal_person(r, &pk))?;
        for e in templates {
            let k = self.template_key(&r.person.id)?;
            self.t().templates.insert(k.as_bytes(), seal(&template_seal_key(&key, &pk), &r.person.id, e))?;
        }
        Ok(())
    }
}
