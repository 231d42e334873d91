//! Staff who receive alerts, and each grid's escalation ladder.

use super::*;

impl Store {
    pub fn put_staff(&self, s: &Staff) -> Result<()> {
        let _w = self.writing();
        self.t().staff.insert(s.id.as_bytes(), enc(s))?;
        Ok(())
    }

    pub fn get_staff(&self, id: &str) -> Result<Option<Staff>> {
        self.t().staff.get(id.as_bytes())?.map(|v| dec("staff", &v)).transpose()
    }

    pub fn list_staff(&self) -> Result<Vec<Staff>> {
        all(&self.t().staff, "staff")
    }

    pub fn remove_staff(&self, id: &str) -> Result<Staff> {
        let _w = self.writing();
        let v = self.t().staff.remove(id.as_bytes())?.ok_or_else(|| StoreError::NotFound { what: "staff member", id: id.into() })?;
        dec("staff", &v)
    }

    pub fn put_ladder(&self, grid: &str, levels: &[Level]) -> Result<()> {
        let _w = self.writing();
        self.t().ladders.insert(grid.as_bytes(), enc(&levels))?;
        Ok(())
    }

    pub fn get_ladder(&self, grid: &str) -> Result<Option<Vec<Level>>> {
        self.t().ladders.get(grid.as_bytes())?.map(|v| dec("ladders", &v)).transpose()
    }

    pub fn list_ladders(&self) -> Result<Vec<(String, Vec<Level>)>> {
        self.t()
            .ladders
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).to_string(), dec("ladders", &v)?))
            })
            .collect()
    }

    pub fn remove_ladder(&self, grid: &str) -> Result<()> {
        let _w = self.writing();
        self.t().ladders.remove(grid.as_bytes())?.ok_or_else(|| StoreError::NotFound { what: "ladder for grid", id: grid.into() })?;
        Ok(())
    }
}
