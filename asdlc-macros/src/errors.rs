//! Collecting errors, so one build reports every mistake (serde_derive's `Ctxt`).

/// The errors found so far.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds one.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Adds the error of `result`, if any, and returns its value.
    pub(crate) fn check<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// `Err` with all of them, if there were any.
    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(all) => Err(all),
            None => Ok(()),
        }
    }
}
