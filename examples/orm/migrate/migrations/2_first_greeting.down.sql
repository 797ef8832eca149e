delete from migrate_greetings where message = 'hello from golang-migrate';
