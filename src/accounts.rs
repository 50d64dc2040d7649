//! Users and groups named in the config (`owner`, `group`, `socket_group`): a number is an
//! id as given, anything else is looked up in the system's user and group databases. Each
//! caller words its own error; this module only answers which id, none, or why it could not
//! look.

/// The uid of `name`; `Ok(None)` when no such user exists.
pub(crate) fn user_id(name: &str) -> nix::Result<Option<u32>> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(Some(id));
    }
    Ok(nix::unistd::User::from_name(name)?.map(|user| user.uid.as_raw()))
}

/// The gid of `name`; `Ok(None)` when no such group exists.
pub(crate) fn group_id(name: &str) -> nix::Result<Option<u32>> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(Some(id));
    }
    Ok(nix::unistd::Group::from_name(name)?.map(|group| group.gid.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_ids_and_names_are_looked_up() {
        assert_eq!(user_id("4242").unwrap(), Some(4242));
        assert_eq!(group_id("4242").unwrap(), Some(4242));
        assert_eq!(user_id("root").unwrap(), Some(0));
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(user_id("no-such-user-keyrotd").unwrap(), None);
        assert_eq!(group_id("no-such-group-keyrotd").unwrap(), None);
    }
}
