//! Who may do what: Airflow's four built-in roles and the permissions the UI and API check.
//!
//! Each role includes everything the one before it may do: Viewer reads; User also triggers,
//! clears, pauses and marks; Op also manages connections, variables and pools; Admin also
//! manages users.

use crate::string_enum::string_enum;

string_enum! {
    /// A user's role (Airflow's `Admin`, `Op`, `User`, `Viewer`).
    pub enum Role as "role" {
        Viewer => "Viewer",
        User => "User",
        Op => "Op",
        Admin => "Admin",
    }
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// See DAGs, runs, task instances, logs, XComs and the audit log.
    Read,
    /// Trigger, pause and unpause, clear, mark, delete runs.
    EditDags,
    /// Manage connections, variables and pools.
    Operate,
    /// Manage users.
    ManageUsers,
}

impl Role {
    /// The least role that holds `permission`.
    const fn least_for(permission: Permission) -> Role {
        match permission {
            Permission::Read => Role::Viewer,
            Permission::EditDags => Role::User,
            Permission::Operate => Role::Op,
            Permission::ManageUsers => Role::Admin,
        }
    }

    const fn rank(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::User => 1,
            Role::Op => 2,
            Role::Admin => 3,
        }
    }

    /// Whether this role may do `permission`.
    pub const fn can(self, permission: Permission) -> bool {
        self.rank() >= Role::least_for(permission).rank()
    }

    /// Parses Airflow's role names case-insensitively (`admin`, `Admin`).
    pub fn parse_loose(s: &str) -> Result<Role, crate::ParseEnumError> {
        match Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
        {
            Some(role) => Ok(role),
            None => Role::parse(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_includes_the_ones_below() {
        use Permission::*;
        let table = [
            (Role::Viewer, [true, false, false, false]),
            (Role::User, [true, true, false, false]),
            (Role::Op, [true, true, true, false]),
            (Role::Admin, [true, true, true, true]),
        ];
        for (role, expected) in table {
            let got = [Read, EditDags, Operate, ManageUsers].map(|p| role.can(p));
            assert_eq!(got, expected, "{role}");
        }
    }

    #[test]
    fn parses_loosely_and_rejects_unknown_roles() {
        assert_eq!(Role::parse_loose("admin").unwrap(), Role::Admin);
        assert_eq!(Role::parse_loose("Viewer").unwrap(), Role::Viewer);
        let err = Role::parse_loose("root").unwrap_err();
        assert!(err.to_string().contains("Viewer, User, Op, Admin"), "{err}");
    }
}
